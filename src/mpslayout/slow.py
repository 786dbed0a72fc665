"""Obviously-correct slow twins of every public mpslayout converter.

Each function here has the name and the arguments of its fast counterpart in
``mpslayout`` (without ``out=`` and ``threads=``) and is written as plain nested Python
loops straight from the index formulas of docs/layouts.md: it walks the destination index
space and computes, by the formula, the source index of each element.

Elements are moved as unsigned integers of the same width, so every bit survives (NaN
payloads, signed zeros, subnormals); a requested ``dtype=`` (or the float64 -> float32
default of the MPS converters) is applied with numpy's / ml_dtypes' ``astype`` at the very
end. Padding is written as integer 0, i.e. +0 in every supported dtype.

These functions are for checking correctness, not for speed or for thorough validation.
They import nothing from the rest of the package, on purpose.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable

import numpy as np

__all__ = [
    "bias",
    "conv_transpose_weights",
    "conv_weights",
    "convert",
    "dense_reshape",
    "depthwise_weights",
    "expand_depthwise",
    "fc_weights",
    "image_from_slices",
    "image_slices",
    "permute",
    "reshape_gather",
    "reshape_slices",
]

_UINT: dict[int, type] = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

# (source dtype name, destination dtype name) pairs that dtype= may request.
_CASTS = {
    ("float32", "float16"),
    ("float16", "float32"),
    ("float64", "float32"),
    ("float32", "bfloat16"),
    ("bfloat16", "float32"),
}

# Dtypes the MPS converters keep when dtype=None (float64 becomes float32).
_MPS_KEEP = {"float32", "float16", "bfloat16", "uint8"}

_IMAGE_LAYOUTS = ("NCHW", "NHWC", "CHW", "HWC")


# --------------------------------------------------------------------------- helpers


def _as_dtype(dtype: Any) -> np.dtype:
    """np.dtype(dtype), importing ml_dtypes lazily for the name "bfloat16"."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        import ml_dtypes  # optional dependency, imported lazily

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def _is_ml_dtype(dt: np.dtype) -> bool:
    return dt.type.__module__.split(".")[0] == "ml_dtypes"


def _generic_target(src: np.dtype, dtype: Any) -> np.dtype:
    """Result dtype of permute/convert; TypeError for unsupported dtypes or casts."""
    if src.fields is not None or src.kind in "OSU" or src.itemsize not in _UINT:
        raise TypeError(f"unsupported dtype {src}")
    if src.kind == "V" and not _is_ml_dtype(src):
        raise TypeError(f"unsupported dtype {src}")
    if dtype is None:
        return src
    target = _as_dtype(dtype)
    if target.name != src.name and (src.name, target.name) not in _CASTS:
        raise TypeError(f"unsupported cast {src} -> {target}")
    return target


def _mps_target(src: np.dtype, dtype: Any) -> np.dtype:
    """Result dtype of the MPS converters; TypeError for unsupported dtypes or casts."""
    if src.name not in _MPS_KEEP and src.name != "float64":
        raise TypeError(f"MPS converters take float32/float16/bfloat16/uint8, not {src}")
    if dtype is None:  # MPS wants native byte order
        return np.dtype(np.float32) if src.name == "float64" else src.newbyteorder("=")
    target = _as_dtype(dtype)
    if target.name != src.name and (src.name, target.name) not in _CASTS:
        raise TypeError(f"unsupported cast {src} -> {target}")
    return target


def _bits(a: np.ndarray) -> np.ndarray:
    """View ``a`` (any strides) as unsigned integers of the same width."""
    return a.view(_UINT[a.dtype.itemsize])


def _zeros_like_bits(shape: Sequence[int], a: np.ndarray) -> np.ndarray:
    return np.zeros(tuple(shape), dtype=_UINT[a.dtype.itemsize])


def _finish(dst_bits: np.ndarray, src: np.dtype, target: np.dtype) -> np.ndarray:
    """Reinterpret the copied bits as ``src`` and cast to ``target`` with astype."""
    res = dst_bits.view(src)
    if target != src:
        with np.errstate(all="ignore"):
            res = res.astype(target, order="C")
    assert res.flags.c_contiguous  # fresh C-order array (also when 0-d)
    return res


def _to_float32(dst_bits: np.ndarray, src: np.dtype) -> np.ndarray:
    return _finish(dst_bits, src, np.dtype(np.float32))


def _index(v: Any, name: str) -> int:
    try:
        n = operator.index(v)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {v!r}") from None
    return n


def _shape3(shape: Any, name: str) -> tuple[int, int, int]:
    vals = tuple(_index(v, name) for v in shape)
    if len(vals) != 3 or min(vals) < 0:
        raise ValueError(f"{name} must be 3 non-negative integers, got {shape!r}")
    return vals[0], vals[1], vals[2]


def _slices_of(c: int) -> tuple[int, int]:
    """(S, P): slice count and components per pixel of an image with c channels."""
    if c <= 2:
        return 1, c
    return (c + 3) // 4, 4


def _ranges(*sizes: int) -> Iterable[tuple[int, ...]]:
    return itertools.product(*(range(n) for n in sizes))


def _check_4d(a: np.ndarray, name: str = "w") -> None:
    if a.ndim != 4:
        raise ValueError(f"{name} must be 4-D, got shape {a.shape}")


# --------------------------------------------------------------------------- generic


def permute(x: Any, axes: Sequence[int], *, dtype: Any = None) -> np.ndarray:
    """dst[i_0, ..., i_{n-1}] = x[j] with j[axes[k]] = i_k (numpy transpose semantics)."""
    a = np.asarray(x)
    target = _generic_target(a.dtype, dtype)
    nd = a.ndim
    if nd > 8:
        raise ValueError(f"at most 8 dimensions, got {nd}")
    ax = [_index(v, "axes") for v in axes]
    if len(ax) != nd:
        raise ValueError(f"axes {axes!r} do not match {nd} dimensions")
    ax = [v + nd if v < 0 else v for v in ax]
    if sorted(ax) != list(range(nd)):
        raise ValueError(f"axes {axes!r} are not a permutation of range({nd})")
    src = _bits(a)
    shape = tuple(a.shape[p] for p in ax)
    dst = _zeros_like_bits(shape, a)
    for idx in np.ndindex(*shape):
        j = [0] * nd
        for k, p in enumerate(ax):
            j[p] = idx[k]
        dst[idx] = src[tuple(j)]
    return _finish(dst, a.dtype, target)


def _parse_layout(layout: Any) -> tuple[str, list[tuple[str, int]]]:
    """Split a layout into axis letters and blocks.

    "NCHW4c" -> ("NCHW", [("C", 4)]); "OHWI4o4i" -> ("OHWI", [("O", 4), ("I", 4)]).
    """
    if not isinstance(layout, str):
        raise ValueError(f"layout must be a string, got {layout!r}")
    i = 0
    while i < len(layout) and "A" <= layout[i] <= "Z":
        i += 1
    letters = layout[:i]
    if not letters:
        raise ValueError(f"layout {layout!r} must start with uppercase axis letters")
    if len(set(letters)) != len(letters):
        raise ValueError(f"layout {layout!r} repeats a letter")
    blocks: list[tuple[str, int]] = []
    while i < len(layout):
        j = i
        while j < len(layout) and "0" <= layout[j] <= "9":
            j += 1
        if j == i or j >= len(layout) or not ("a" <= layout[j] <= "z"):
            raise ValueError(f"bad block in layout {layout!r}")
        size = int(layout[i:j])
        letter = layout[j].upper()
        if size < 1:
            raise ValueError(f"block size must be >= 1 in layout {layout!r}")
        if letter not in letters:
            raise ValueError(f"block letter {layout[j]!r} names no axis of {layout!r}")
        if letter in (b[0] for b in blocks):
            raise ValueError(f"layout {layout!r} blocks {letter} twice")
        blocks.append((letter, size))
        i = j + 1
    return letters, blocks


def convert(
    x: Any,
    src: str,
    dst: str,
    *,
    channels: int | None = None,
    sizes: Mapping[str, int] | None = None,
    dtype: Any = None,
) -> np.ndarray:
    """Layout-string conversion with blocked (zero padded) axes, element by element."""
    a = np.asarray(x)
    target = _generic_target(a.dtype, dtype)
    s_letters, s_blocks = _parse_layout(src)
    d_letters, d_blocks = _parse_layout(dst)
    if set(s_letters) != set(d_letters):
        diff = "".join(sorted(set(s_letters) ^ set(d_letters)))
        raise ValueError(f"layouts {src!r} and {dst!r} differ in letters {diff}")
    if a.ndim != len(s_letters) + len(s_blocks):
        raise ValueError(f"x has {a.ndim} dimensions, layout {src!r} has {len(s_letters)}")
    s_block = dict(s_blocks)
    d_block = dict(d_blocks)

    given: dict[str, int] = {}
    if sizes is not None:
        given.update({str(k): _index(v, "sizes") for k, v in sizes.items()})
    if channels is not None:
        if len(s_blocks) != 1:
            raise ValueError("channels= needs a source layout with exactly one blocked axis")
        given[s_blocks[0][0]] = _index(channels, "channels")

    size: dict[str, int] = {}
    for p, letter in enumerate(s_letters):
        if letter in s_block:
            if letter not in given:
                raise ValueError(f"size of blocked axis {letter} must be given")
            n, b = given[letter], s_block[letter]
            if n < 0 or -(-n // b) != a.shape[p]:
                raise ValueError(f"size {n} of {letter} does not fit shape {a.shape}")
            size[letter] = n
        else:
            size[letter] = a.shape[p]
    for q, (_, b) in enumerate(s_blocks):
        if a.shape[len(s_letters) + q] != b:
            raise ValueError(f"block dimension of {src!r} must be {b}, shape {a.shape}")

    d_shape = [-(-size[L] // d_block[L]) if L in d_block else size[L] for L in d_letters]
    d_shape += [b for _, b in d_blocks]
    d_bpos = {L: len(d_letters) + q for q, (L, _) in enumerate(d_blocks)}
    bits = _bits(a)
    out = _zeros_like_bits(d_shape, a)
    for idx in np.ndindex(*d_shape):
        logical: dict[str, int] = {}
        for p, letter in enumerate(d_letters):
            v = idx[p]
            if letter in d_block:
                v = v * d_block[letter] + idx[d_bpos[letter]]
            logical[letter] = v
        if any(logical[L] >= size[L] for L in d_letters):
            continue  # padding: stays 0
        j = [logical[L] // s_block[L] if L in s_block else logical[L] for L in s_letters]
        j += [logical[L] % b for L, b in s_blocks]
        out[idx] = bits[tuple(j)]
    return _finish(out, a.dtype, target)


# --------------------------------------------------------------------------- weights


def conv_weights(w: Any, *, layout: str = "OIHW", groups: int = 1, dtype: Any = None) -> np.ndarray:
    """OHWI: dst[o][kh][kw][i] = Wc[o][i][kh][kw] ("OIHW") or Kc[kh][kw][i][o] ("HWIO")."""
    a = np.asarray(w)
    target = _mps_target(a.dtype, dtype)
    _check_4d(a)
    if layout == "OIHW":
        o_n, i_n, kh_n, kw_n = a.shape
    elif layout == "HWIO":
        kh_n, kw_n, i_n, o_n = a.shape
    else:
        raise ValueError(f"layout must be 'OIHW' or 'HWIO', got {layout!r}")
    g = _index(groups, "groups")
    if g < 1 or o_n % g != 0:
        raise ValueError(f"groups={groups} must be >= 1 and divide O={o_n}")
    bits = _bits(a)
    dst = _zeros_like_bits((o_n, kh_n, kw_n, i_n), a)
    for o, kh, kw, i in _ranges(o_n, kh_n, kw_n, i_n):
        if layout == "OIHW":
            dst[o, kh, kw, i] = bits[o, i, kh, kw]
        else:
            dst[o, kh, kw, i] = bits[kh, kw, i, o]
    return _finish(dst, a.dtype, target)


def depthwise_weights(
    w: Any, *, layout: str = "OIHW", in_channels: int | None = None, dtype: Any = None
) -> np.ndarray:
    """(C, kH, kW): dst[c][kh][kw] = w[c][0][kh][kw] ("OIHW") or D[kh][kw][c][0] ("HWCM")."""
    a = np.asarray(w)
    target = _mps_target(a.dtype, dtype)
    _check_4d(a)
    if layout == "OIHW":
        c_n, one, kh_n, kw_n = a.shape
        if one != 1:
            raise ValueError(f"depthwise OIHW weights must be (C, 1, kH, kW), got {a.shape}")
        if in_channels is not None and _index(in_channels, "in_channels") != c_n:
            raise ValueError("channel multiplier > 1: use expand_depthwise")
    elif layout == "HWCM":
        kh_n, kw_n, c_n, m = a.shape
        if m != 1:
            raise ValueError(f"channel multiplier {m} != 1: use expand_depthwise")
        if in_channels is not None and _index(in_channels, "in_channels") != c_n:
            raise ValueError(f"in_channels={in_channels} != C={c_n}")
    else:
        raise ValueError(f"layout must be 'OIHW' or 'HWCM', got {layout!r}")
    bits = _bits(a)
    dst = _zeros_like_bits((c_n, kh_n, kw_n), a)
    for c, kh, kw in _ranges(c_n, kh_n, kw_n):
        if layout == "OIHW":
            dst[c, kh, kw] = bits[c, 0, kh, kw]
        else:
            dst[c, kh, kw] = bits[kh, kw, c, 0]
    return _finish(dst, a.dtype, target)


def expand_depthwise(
    w: Any, *, layout: str = "OIHW", in_channels: int | None = None, dtype: Any = None
) -> np.ndarray:
    """OHWI (C*m, kH, kW, C) of a depthwise convolution, zero outside each channel's block."""
    a = np.asarray(w)
    target = _mps_target(a.dtype, dtype)
    _check_4d(a)
    bits = _bits(a)
    if layout == "OIHW":
        cm, one, kh_n, kw_n = a.shape
        if one != 1:
            raise ValueError(f"depthwise OIHW weights must be (C*m, 1, kH, kW), got {a.shape}")
        if in_channels is None:
            raise ValueError("expand_depthwise with layout 'OIHW' needs in_channels")
        c_n = _index(in_channels, "in_channels")
        if c_n < 1 or cm % c_n != 0:
            raise ValueError(f"in_channels={c_n} must divide {cm}")
        m = cm // c_n
        dst = _zeros_like_bits((cm, kh_n, kw_n, c_n), a)
        for o, kh, kw, i in _ranges(cm, kh_n, kw_n, c_n):
            if i == o // m:
                dst[o, kh, kw, i] = bits[o, 0, kh, kw]
    elif layout == "HWCM":
        kh_n, kw_n, c_n, m = a.shape
        if in_channels is not None and _index(in_channels, "in_channels") != c_n:
            raise ValueError(f"in_channels={in_channels} != C={c_n}")
        dst = _zeros_like_bits((c_n * m, kh_n, kw_n, c_n), a)
        for c, j, kh, kw, i in _ranges(c_n, m, kh_n, kw_n, c_n):
            if i == c:
                dst[c * m + j, kh, kw, i] = bits[kh, kw, c, j]
    else:
        raise ValueError(f"layout must be 'OIHW' or 'HWCM', got {layout!r}")
    return _finish(dst, a.dtype, target)


def conv_transpose_weights(
    w: Any, *, layout: str = "IOHW", groups: int = 1, flip: bool = True, dtype: Any = None
) -> np.ndarray:
    """OHWI (O, kH, kW, I/g): channels swapped, kernel rotated by 180 degrees if flip."""
    a = np.asarray(w)
    target = _mps_target(a.dtype, dtype)
    _check_4d(a)
    g = _index(groups, "groups")
    if g < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    bits = _bits(a)

    def f(k: int, n: int) -> int:
        return n - 1 - k if flip else k

    if layout == "IOHW":
        i_n, og, kh_n, kw_n = a.shape
        if i_n % g != 0:
            raise ValueError(f"groups={g} must divide I={i_n}")
        ig = i_n // g
        dst = _zeros_like_bits((og * g, kh_n, kw_n, ig), a)
        for j, o, kh, kw, i in _ranges(g, og, kh_n, kw_n, ig):
            dst[j * og + o, kh, kw, i] = bits[j * ig + i, o, f(kh, kh_n), f(kw, kw_n)]
    elif layout == "HWOI":
        if g != 1:
            raise ValueError("groups != 1 is not supported with layout 'HWOI'")
        kh_n, kw_n, o_n, i_n = a.shape
        dst = _zeros_like_bits((o_n, kh_n, kw_n, i_n), a)
        for o, kh, kw, i in _ranges(o_n, kh_n, kw_n, i_n):
            dst[o, kh, kw, i] = bits[f(kh, kh_n), f(kw, kw_n), o, i]
    else:
        raise ValueError(f"layout must be 'IOHW' or 'HWOI', got {layout!r}")
    return _finish(dst, a.dtype, target)


def fc_weights(
    w: Any,
    *,
    input_shape: Sequence[int] | None = None,
    layout: str = "OI",
    flatten: str = "CHW",
    dtype: Any = None,
) -> np.ndarray:
    """(O, H, W, C): dst[o][h][w][c] = L[o][n], n the flatten index of (c, h, w)."""
    a = np.asarray(w)
    target = _mps_target(a.dtype, dtype)
    if a.ndim != 2:
        raise ValueError(f"w must be 2-D, got shape {a.shape}")
    if layout == "OI":
        o_n, n_n = a.shape
    elif layout == "IO":
        n_n, o_n = a.shape
    else:
        raise ValueError(f"layout must be 'OI' or 'IO', got {layout!r}")
    if flatten not in ("CHW", "HWC"):
        raise ValueError(f"flatten must be 'CHW' or 'HWC', got {flatten!r}")
    if input_shape is None:
        h_n, w_n, c_n = 1, 1, n_n
    else:
        s = _shape3(input_shape, "input_shape")
        if flatten == "CHW":
            c_n, h_n, w_n = s
        else:
            h_n, w_n, c_n = s
        if h_n * w_n * c_n != n_n:
            raise ValueError(f"input_shape {tuple(input_shape)} does not hold N={n_n} inputs")
    bits = _bits(a)
    dst = _zeros_like_bits((o_n, h_n, w_n, c_n), a)
    for o, h, x, c in _ranges(o_n, h_n, w_n, c_n):
        if flatten == "CHW":
            n = c * h_n * w_n + h * w_n + x
        else:
            n = (h * w_n + x) * c_n + c
        dst[o, h, x, c] = bits[o, n] if layout == "OI" else bits[n, o]
    return _finish(dst, a.dtype, target)


def dense_reshape(
    w: Any,
    b: Any = None,
    *,
    shape: Sequence[int],
    layout: str = "OI",
    order: str = "CHW",
    target: str = "rows",
    dtype: Any = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Dense rows (and bias) of a Dense -> Reshape(H, W, C) put in HWC neuron order."""
    a = np.asarray(w)
    out_dtype = _mps_target(a.dtype, dtype)
    h_n, w_n, c_n = _shape3(shape, "shape")
    nn = h_n * w_n * c_n
    if a.ndim != 2:
        raise ValueError(f"w must be 2-D, got shape {a.shape}")
    if layout == "OI":
        rows, i_n = a.shape
    elif layout == "IO":
        i_n, rows = a.shape
    else:
        raise ValueError(f"layout must be 'OI' or 'IO', got {layout!r}")
    if rows != nn:
        raise ValueError(f"w has {rows} output neurons, shape {tuple(shape)} needs {nn}")
    if order not in ("CHW", "HWC"):
        raise ValueError(f"order must be 'CHW' or 'HWC', got {order!r}")
    if target not in ("rows", "subpixel", "conv_transpose"):
        raise ValueError(f"unknown target {target!r}")
    if target == "subpixel" and h_n != w_n:
        raise ValueError(f"target 'subpixel' needs H == W, got {h_n}x{w_n}")

    def neuron(y: int, x: int, c: int) -> int:
        if order == "CHW":
            return c * h_n * w_n + y * w_n + x
        return (y * w_n + x) * c_n + c

    bits = _bits(a)

    def src(n: int, i: int) -> Any:
        return bits[n, i] if layout == "OI" else bits[i, n]

    if target == "conv_transpose":
        dst = _zeros_like_bits((c_n, h_n, w_n, i_n), a)
        for c, kh, kw, i in _ranges(c_n, h_n, w_n, i_n):
            dst[c, kh, kw, i] = src(neuron(h_n - 1 - kh, w_n - 1 - kw, c), i)
    else:
        shape_out = (nn, i_n) if target == "rows" else (nn, 1, 1, i_n)
        dst = _zeros_like_bits((nn, i_n), a)
        for y, x, c, i in _ranges(h_n, w_n, c_n, i_n):
            dst[(y * w_n + x) * c_n + c, i] = src(neuron(y, x, c), i)
        dst = dst.reshape(shape_out)  # adds unit axes only: same bytes
    weights = _finish(dst, a.dtype, out_dtype)

    if b is None:
        return weights, None
    bb = np.asarray(b)
    if bb.ndim != 1 or bb.shape[0] != nn:
        raise ValueError(f"b must have shape ({nn},), got {bb.shape}")
    bias_hwc = _zeros_like_bits((nn,), bb)
    b_bits = _bits(bb)
    for y, x, c in _ranges(h_n, w_n, c_n):
        bias_hwc[(y * w_n + x) * c_n + c] = b_bits[neuron(y, x, c)]
    b32 = _to_float32(bias_hwc, bb.dtype)
    if target != "conv_transpose":
        return weights, b32
    if h_n * w_n == 0 and c_n > 0:
        raise ValueError("target 'conv_transpose' needs at least one pixel")
    per_c = np.zeros(c_n, dtype=np.uint32)
    b32_bits = _bits(b32)
    for c in range(c_n):
        first = b32_bits[c]  # (y, x) = (0, 0)
        for y, x in _ranges(h_n, w_n):
            if b32_bits[(y * w_n + x) * c_n + c] != first:
                raise ValueError(f"bias of channel {c} is not constant over (y, x)")
        per_c[c] = first
    return weights, per_c.view(np.float32)


def bias(b: Any) -> np.ndarray:
    """Contiguous float32 copy of a 1-D bias."""
    a = np.asarray(b)
    if a.ndim != 1:
        raise ValueError(f"b must be 1-D, got shape {a.shape}")
    if a.dtype.kind in "OSUcV" and not _is_ml_dtype(a.dtype):
        raise TypeError(f"unsupported bias dtype {a.dtype}")
    bits = _bits(a)
    dst = _zeros_like_bits(a.shape, a)
    for i in range(a.shape[0]):
        dst[i] = bits[i]
    return _to_float32(dst, a.dtype)


# --------------------------------------------------------------------------- images


def _image_dims(a: np.ndarray, layout: str) -> tuple[int, int, int, int]:
    """(N, C, H, W) of an image tensor in one of the four image layouts."""
    if layout not in _IMAGE_LAYOUTS:
        raise ValueError(f"layout must be one of {_IMAGE_LAYOUTS}, got {layout!r}")
    if a.ndim != len(layout):
        raise ValueError(f"layout {layout!r} needs {len(layout)}-D input, got {a.shape}")
    dims = dict(zip(layout, a.shape))
    return dims.get("N", 1), dims["C"], dims["H"], dims["W"]


def _image_index(layout: str, n: int, c: int, y: int, x: int) -> tuple[int, ...]:
    pos = {"N": n, "C": c, "H": y, "W": x}
    return tuple(pos[letter] for letter in layout)


def image_slices(x: Any, *, layout: str = "NCHW", dtype: Any = None) -> np.ndarray:
    """(N*S, H, W, P): buf[n*S + s][y][x][k] = channel 4s+k of image n, 0 past C."""
    a = np.asarray(x)
    target = _mps_target(a.dtype, dtype)
    n_n, c_n, h_n, w_n = _image_dims(a, layout)
    s_n, p_n = _slices_of(c_n)
    bits = _bits(a)
    dst = _zeros_like_bits((n_n * s_n, h_n, w_n, p_n), a)
    for n, s, y, x_, k in _ranges(n_n, s_n, h_n, w_n, p_n):
        c = 4 * s + k
        if c < c_n:
            dst[n * s_n + s, y, x_, k] = bits[_image_index(layout, n, c, y, x_)]
    return _finish(dst, a.dtype, target)


def image_from_slices(
    t: Any, *, channels: int, layout: str = "NCHW", dtype: Any = None
) -> np.ndarray:
    """Inverse of image_slices: image[n][c][y][x] = t[n*S + c//4][y][x][c%4]."""
    a = np.asarray(t)
    target = _mps_target(a.dtype, dtype)
    if layout not in _IMAGE_LAYOUTS:
        raise ValueError(f"layout must be one of {_IMAGE_LAYOUTS}, got {layout!r}")
    c_n = _index(channels, "channels")
    if c_n < 0:
        raise ValueError(f"channels must be >= 0, got {c_n}")
    if a.ndim != 4:
        raise ValueError(f"t must be 4-D (N*S, H, W, P), got {a.shape}")
    s_n, p_n = _slices_of(c_n)
    ns, h_n, w_n, p = a.shape
    if p != p_n or ns % s_n != 0:
        raise ValueError(f"t of shape {a.shape} is no slice array of {c_n} channels")
    n_n = ns // s_n
    if "N" not in layout and n_n != 1:
        raise ValueError(f"layout {layout!r} has no N axis but t holds {n_n} images")
    dims = {"N": n_n, "C": c_n, "H": h_n, "W": w_n}
    out_shape = tuple(dims[letter] for letter in layout)
    bits = _bits(a)
    dst = _zeros_like_bits(out_shape, a)
    for idx in np.ndindex(*out_shape):
        pos = dict(zip(layout, idx))
        n, c, y, x = pos.get("N", 0), pos["C"], pos["H"], pos["W"]
        dst[idx] = bits[n * s_n + c // 4, y, x, c % 4]
    return _finish(dst, a.dtype, target)


def _flat(y: int, x: int, c: int, h_n: int, w_n: int, c_n: int, order: str) -> int:
    if order == "HWC":
        return (y * w_n + x) * c_n + c
    return c * h_n * w_n + y * w_n + x


def _unflat(flat: int, h_n: int, w_n: int, c_n: int, order: str) -> tuple[int, int, int]:
    """(y, x, c) of a flat index of an (H, W, C) image flattened in ``order``."""
    if order == "HWC":
        c = flat % c_n
        x = (flat // c_n) % w_n
        y = flat // (c_n * w_n)
    else:
        x = flat % w_n
        y = (flat // w_n) % h_n
        c = flat // (w_n * h_n)
    return y, x, c


def _reshape_walk(
    src: Sequence[int], dst: Sequence[int], order: str
) -> tuple[tuple[int, int, int], tuple[int, int, int], Callable[..., Any]]:
    h1, w1, c1 = _shape3(src, "src")
    h2, w2, c2 = _shape3(dst, "dst")
    if h1 * w1 * c1 != h2 * w2 * c2:
        raise ValueError(f"src {tuple(src)} and dst {tuple(dst)} differ in volume")
    if order not in ("HWC", "CHW"):
        raise ValueError(f"order must be 'HWC' or 'CHW', got {order!r}")

    def source_of(y: int, x: int, c: int) -> tuple[int, int, int]:
        return _unflat(_flat(y, x, c, h2, w2, c2, order), h1, w1, c1, order)

    return (h1, w1, c1), (h2, w2, c2), source_of


def reshape_slices(
    t: Any, *, src: Sequence[int], dst: Sequence[int], order: str = "HWC", dtype: Any = None
) -> np.ndarray:
    """Slice array of each image reshaped from src=(H1, W1, C1) to dst=(H2, W2, C2)."""
    a = np.asarray(t)
    target = _mps_target(a.dtype, dtype)
    (h1, w1, c1), (h2, w2, c2), source_of = _reshape_walk(src, dst, order)
    s1, p1 = _slices_of(c1)
    s2, p2 = _slices_of(c2)
    if a.ndim != 4 or a.shape[1:] != (h1, w1, p1) or a.shape[0] % s1 != 0:
        raise ValueError(f"t of shape {a.shape} is no slice array of images {tuple(src)}")
    n_n = a.shape[0] // s1
    bits = _bits(a)
    out = _zeros_like_bits((n_n * s2, h2, w2, p2), a)
    for n, s, y, x, k in _ranges(n_n, s2, h2, w2, p2):
        c = 4 * s + k
        if c >= c2:
            continue
        ys, xs, cs = source_of(y, x, c)
        out[n * s2 + s, y, x, k] = bits[n * s1 + cs // 4, ys, xs, cs % 4]
    return _finish(out, a.dtype, target)


def reshape_gather(src: Sequence[int], dst: Sequence[int], *, order: str = "HWC") -> np.ndarray:
    """int64 (S2, H2, W2, P2): flat index into the source (S1, H1, W1, P1), -1 for padding."""
    (h1, w1, c1), (h2, w2, c2), source_of = _reshape_walk(src, dst, order)
    _, p1 = _slices_of(c1)
    s2, p2 = _slices_of(c2)
    out = np.full((s2, h2, w2, p2), -1, dtype=np.int64)
    for s, y, x, k in _ranges(s2, h2, w2, p2):
        c = 4 * s + k
        if c >= c2:
            continue
        ys, xs, cs = source_of(y, x, c)
        out[s, y, x, k] = ((cs // 4 * h1 + ys) * w1 + xs) * p1 + cs % 4
    return out
