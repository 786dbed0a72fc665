"""Layout strings ("OIHW", "NHWC", "NCHW4c", "OHWI4o4i") and :func:`convert` between them.

A layout names each axis with one uppercase letter; it may end in blocks, each a size and the
lowercase letter of the axis it splits (oneDNN's notation): "NCHW4c" is the array
``(N, ceil(C/4), H, W, 4)`` whose last block of C is zero padded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from . import _core, engine

__all__ = ["Layout", "convert", "parse_layout"]

_GRAMMAR = re.compile(r"([A-Z]+)((?:[0-9]+[a-z])*)")
_BLOCK = re.compile(r"([0-9]+)([a-z])")


@dataclass(frozen=True)
class Layout:
    """A parsed layout: its axis letters and its blocks, in the order written."""

    text: str
    letters: str
    blocks: tuple[tuple[str, int], ...]  # (uppercase letter, block size)

    @property
    def ndim(self) -> int:
        return len(self.letters) + len(self.blocks)

    def block_of(self, letter: str) -> int:
        for name, size in self.blocks:
            if name == letter:
                return size
        return 0


# Beyond this a block alone would overflow numpy's array size (int64 bytes).
_MAX_BLOCK = 2**62


def parse_layout(text: str, name: str = "layout") -> Layout:
    """Parse a layout string; ValueError names the argument and what is wrong."""
    if not isinstance(text, str):  # checked before the cache, which needs a hashable key
        raise TypeError(f"{name} must be a layout string such as 'NCHW', got {type(text).__name__}")
    return _parse_layout(text, name)


@lru_cache(maxsize=256)
def _parse_layout(text: str, name: str) -> Layout:
    m = _GRAMMAR.fullmatch(text)
    if m is None:
        raise ValueError(
            f"{name}={text!r} is not a layout: use one uppercase letter per axis, optionally "
            "followed by blocks such as '4c' (e.g. 'OIHW', 'NHWC', 'NCHW4c')"
        )
    letters, tail = m.group(1), m.group(2)
    repeated = sorted({c for c in letters if letters.count(c) > 1})
    if repeated:
        raise ValueError(f"{name}={text!r} repeats axis letter(s) {''.join(repeated)}")
    blocks = []
    for size_text, low in _BLOCK.findall(tail):
        letter = low.upper()
        size = int(size_text)
        if letter not in letters:
            raise ValueError(f"{name}={text!r} blocks axis {letter!r}, which it does not have")
        if not 1 <= size <= _MAX_BLOCK:
            raise ValueError(
                f"{name}={text!r} has block size {size} for {letter!r}; must be in [1, 2**62]"
            )
        if any(letter == b for b, _ in blocks):
            raise ValueError(f"{name}={text!r} blocks axis {letter!r} twice")
        blocks.append((letter, size))
    return Layout(text, letters, tuple(blocks))


@lru_cache(maxsize=256)
def _unblocked_axes(src: str, dst: str) -> tuple[int, ...] | None:
    """The transpose axes between two valid unblocked layouts, else None (full path)."""
    try:
        s_lay, d_lay = _parse_layout(src, "src"), _parse_layout(dst, "dst")
    except ValueError:
        return None
    if s_lay.blocks or d_lay.blocks or sorted(s_lay.letters) != sorted(d_lay.letters):
        return None
    return tuple(s_lay.letters.index(c) for c in d_lay.letters)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _logical_extents(
    x: np.ndarray, lay: Layout, channels: int | None, sizes: Mapping[str, int] | None
) -> dict[str, int]:
    """Unblocked size of every axis of the source layout."""
    if x.ndim != lay.ndim:
        raise ValueError(
            f"x has {x.ndim} dimensions but layout src={lay.text!r} describes {lay.ndim}"
        )
    given: dict[str, int] = {}
    if sizes is not None:
        if not isinstance(sizes, Mapping):
            raise TypeError(
                f"sizes must be a mapping of axis letter to size such as {{'C': 3}}, "
                f"got {type(sizes).__name__}"
            )
        for k, v in sizes.items():
            if not isinstance(k, str) or k not in lay.letters:
                raise ValueError(f"sizes names axis {k!r}, which src={lay.text!r} does not have")
            given[k] = _as_size(v, f"sizes[{k!r}]")
    if channels is not None:
        blocked = [b for b, _ in lay.blocks]
        if len(blocked) != 1:
            raise ValueError(
                f"channels= applies to a source with exactly one blocked axis; src={lay.text!r} "
                f"has {len(blocked)}: pass sizes={{letter: size}} instead"
            )
        given[blocked[0]] = _as_size(channels, "channels")
    ext: dict[str, int] = {}
    for i, letter in enumerate(lay.letters):
        b = lay.block_of(letter)
        if not b:
            ext[letter] = int(x.shape[i])
            if letter in given and given[letter] != ext[letter]:
                raise ValueError(
                    f"sizes[{letter!r}]={given[letter]} disagrees with x.shape[{i}]={x.shape[i]}"
                )
            continue
        if letter not in given:
            hint = "channels=" if len(lay.blocks) == 1 else f"sizes={{{letter!r}: ...}}"
            raise ValueError(
                f"src={lay.text!r} is blocked on {letter!r}: pass its unblocked size with {hint} "
                "(the padding cannot be told from the data)"
            )
        e = given[letter]
        if _ceil_div(e, b) != x.shape[i]:
            raise ValueError(
                f"size {e} of axis {letter!r} needs {_ceil_div(e, b)} blocks of {b}, "
                f"but x.shape[{i}] is {x.shape[i]}"
            )
    for j, (letter, b) in enumerate(lay.blocks):
        pos = len(lay.letters) + j
        if x.shape[pos] != b:
            raise ValueError(
                f"x.shape[{pos}] is {x.shape[pos]}, but src={lay.text!r} has a block of {b} there"
            )
        ext[letter] = given[letter]
    return ext


def _as_size(v: Any, name: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return int(v)


def physical_shape(lay: Layout, ext: Mapping[str, int]) -> tuple[int, ...]:
    """Array shape of a layout for given unblocked axis sizes."""
    outer = [_ceil_div(ext[c], lay.block_of(c)) if lay.block_of(c) else ext[c] for c in lay.letters]
    return tuple(outer + [b for _, b in lay.blocks])


def _axis_strides(x: np.ndarray, lay: Layout) -> dict[str, tuple[int, int]]:
    """letter -> (outer stride, inner stride); inner is 0 for unblocked axes."""
    res = {}
    for i, letter in enumerate(lay.letters):
        inner = 0
        for j, (b, _) in enumerate(lay.blocks):
            if b == letter:
                inner = x.strides[len(lay.letters) + j]
        res[letter] = (x.strides[i], inner)
    return res


def convert(
    x: Any,
    src: str,
    dst: str,
    *,
    channels: int | None = None,
    sizes: Mapping[str, int] | None = None,
    dtype: Any = None,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Convert ``x`` from layout ``src`` to layout ``dst`` (e.g. ``"NCHW"`` -> ``"NHWC"``).

    For unblocked layouts this equals
    ``np.ascontiguousarray(np.transpose(x, [src.index(c) for c in dst]))``. A blocked
    destination such as ``"NCHW4c"`` equals padding C with zeros to a multiple of 4, then
    ``x.reshape(N, C4 // 4, 4, H, W).transpose(0, 1, 3, 4, 2)``; converting from a blocked
    source drops the padding and needs the unblocked size: ``channels=C`` when the source
    has one blocked axis, else ``sizes={"C": C, ...}``.
    """
    if channels is None and sizes is None and type(src) is str and type(dst) is str:
        axes = _unblocked_axes(src, dst)
        if axes is not None:  # the common call in one C++ step; None: take the full path
            result = _core.fast_permute(x, axes, out, threads, 0, dtype)
            if result is not None:
                return result
    a = engine.as_input(x, "x")
    s_lay = parse_layout(src, "src")
    d_lay = parse_layout(dst, "dst")
    if sorted(s_lay.letters) != sorted(d_lay.letters):
        raise ValueError(
            f"src={src!r} and dst={dst!r} must name the same axes: "
            f"{''.join(sorted(s_lay.letters))} vs {''.join(sorted(d_lay.letters))}"
        )
    ext = _logical_extents(a, s_lay, channels, sizes)
    # A letter blocked on both sides with different sizes goes through its unblocked form.
    clash = [
        c
        for c in d_lay.letters
        if s_lay.block_of(c) and d_lay.block_of(c) and s_lay.block_of(c) != d_lay.block_of(c)
    ]
    if clash:
        mid = d_lay.letters + "".join(f"{b}{c.lower()}" for c, b in d_lay.blocks if c not in clash)
        a = convert(a, src, mid, sizes={c: ext[c] for c, _ in s_lay.blocks}, threads=threads)
        return convert(a, mid, dst, sizes=ext, dtype=dtype, out=out, threads=threads)
    a, out_dt, cast = engine.resolve_dtype(a, dtype, "x", mps=False)
    shape = physical_shape(d_lay, ext)
    if math.prod(shape) * out_dt.itemsize >= 2**63:
        raise ValueError(
            f"dst={dst!r} makes an array of shape {shape} ({out_dt}), beyond numpy's 2**63 bytes"
        )
    result = engine.prepare_out(out, shape, out_dt, a)
    run_layouts(a, s_lay, result, d_lay, ext, cast=cast, threads=threads)
    return result


def run_layouts(
    a: np.ndarray,
    s_lay: Layout,
    result: np.ndarray,
    d_lay: Layout,
    ext: Mapping[str, int],
    *,
    cast: int,
    threads: int | None,
) -> None:
    """One engine call moving ``a`` (layout s_lay) into ``result`` (layout d_lay)."""
    sst = _axis_strides(a, s_lay)
    dst_st = _axis_strides(result, d_lay)
    dims: list[int] = []
    ss: list[int] = []
    ds: list[int] = []
    bounds: list[tuple[int, int, int, int, bool]] = []
    for letter in d_lay.letters:
        so, si = sst[letter]
        do, di = dst_st[letter]
        bs, bd = s_lay.block_of(letter), d_lay.block_of(letter)
        e = ext[letter]
        if not bs and not bd:
            dims.append(e)
            ss.append(so)
            ds.append(do)
            continue
        b = bd or bs
        k = len(dims)
        dims += [_ceil_div(e, b), b]
        if bs and bd:  # same block size on both sides: padding rewritten as zeros
            ss += [so, si]
            ds += [do, di]
        elif bd:  # blocked destination: source axis split, padding zero-filled
            ss += [so * b, so]
            ds += [do, di]
        else:  # blocked source: destination axis split, padding skipped
            ss += [so, si]
            ds += [do * b, do]
        bounds.append((k, k + 1, b, e, bool(bd)))
    engine.run(a, result, dims, ss, ds, bounds=bounds, cast=cast, threads=threads)
