"""docs/layouts.md's formulas, run.

Every code block in docs/layouts.md preceded by ``<!-- check: NAME -->`` is a Python
statement. Each is executed here element by element, on random data, and compared with the
converter it documents (so the page and the code cannot drift apart) and, for the rules whose
point is what the MPS kernel then computes, with a numpy model of that kernel as the SDK
header describes it against the framework's own definition (PyTorch's flatten order, a
scatter-form transposed convolution, a dense layer followed by a view). A new ``check:``
block needs a test here: ``test_every_formula_is_checked`` fails otherwise.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import mpslayout
from mpslayout.export import geometry

DOC = Path(__file__).resolve().parents[1] / "docs" / "layouts.md"
_BLOCK = re.compile(r"<!-- check: (\w+) -->\s*```python\n(.*?)```", re.DOTALL)


def _formulas() -> dict[str, str]:
    if not DOC.exists():  # e.g. the tests run against an installed wheel without docs/
        pytest.skip("docs/layouts.md is not beside the tests")
    found = _BLOCK.findall(DOC.read_text(encoding="utf-8"))
    names = [name for name, _ in found]
    assert len(names) == len(set(names)), f"a check name repeats: {names}"
    return {name: body.strip() for name, body in found}


def formula(name: str) -> Any:
    return compile(_formulas()[name], f"layouts.md:{name}", "exec")


def fill(name: str, out: np.ndarray, loops: dict[str, int], **env: Any) -> np.ndarray:
    """Run formula ``name`` for every combination of the loop variables; ``out`` is bound to
    the name on the formula's left-hand side. ``env`` values that are callables of the loop
    variables are evaluated per element (derived indices the page defines in words)."""
    code = formula(name)
    target = re.match(r"\s*(\w+)", _formulas()[name]).group(1)
    keys = list(loops)
    for values in itertools.product(*(range(n) for n in loops.values())):
        scope = dict(zip(keys, values))
        for k, v in env.items():
            scope[k] = v(**scope) if callable(v) else v
        scope[target] = out
        exec(code, scope)  # one namespace: generator expressions see it
    return out


def value(name: str, **env: Any) -> Any:
    """Evaluate formula ``name`` once and return what it assigns."""
    scope = dict(env)
    exec(formula(name), scope)
    target = re.match(r"\s*(\w+)", _formulas()[name]).group(1)
    return scope[target]


rng = np.random.default_rng(20260)


def rand(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert a.dtype == b.dtype
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


CHECKED: set[str] = set()


def checks(*names: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Mark the formulas a test runs (test_every_formula_is_checked counts them)."""
    CHECKED.update(names)
    return lambda f: f


def test_every_formula_is_checked() -> None:
    assert set(_formulas()) == CHECKED


# ----------------------------------------------------------------------- sections 1 - 3


@checks("conv_oihw", "conv_hwio")
def test_conv_weights() -> None:
    o, i, kh, kw = 8, 3, 3, 2
    wc = rand(o, i, kh, kw)
    loops = {"o": o, "kh": kh, "kw": kw, "i": i}
    same(fill("conv_oihw", np.zeros((o, kh, kw, i), np.float32), loops, Wc=wc),
         mpslayout.conv_weights(wc))
    kc = rand(kh, kw, i, o)
    same(fill("conv_hwio", np.zeros((o, kh, kw, i), np.float32), loops, Kc=kc),
         mpslayout.conv_weights(kc, layout="HWIO"))


@checks("depthwise_oihw", "depthwise_hwcm", "expand_oihw", "expand_hwcm")
def test_depthwise() -> None:
    c, m, kh, kw = 4, 3, 2, 3
    loops = {"c": c, "kh": kh, "kw": kw}
    wc = rand(c, 1, kh, kw)
    same(fill("depthwise_oihw", np.zeros((c, kh, kw), np.float32), loops, Wc=wc),
         mpslayout.depthwise_weights(wc))
    d = rand(kh, kw, c, 1)
    same(fill("depthwise_hwcm", np.zeros((c, kh, kw), np.float32), loops, D=d),
         mpslayout.depthwise_weights(d, layout="HWCM"))
    loops = {"o": c * m, "kh": kh, "kw": kw, "i": c}
    wc = rand(c * m, 1, kh, kw)
    same(fill("expand_oihw", np.zeros((c * m, kh, kw, c), np.float32), loops, Wc=wc, m=m),
         mpslayout.expand_depthwise(wc, in_channels=c))
    d = rand(kh, kw, c, m)
    same(fill("expand_hwcm", np.zeros((c * m, kh, kw, c), np.float32), loops, D=d, m=m),
         mpslayout.expand_depthwise(d, layout="HWCM"))


@checks("transpose_iohw", "transpose_groups", "transpose_hwoi")
def test_transpose_weights() -> None:
    i, o, kh, kw = 3, 5, 3, 2
    loops = {"o": o, "kh": kh, "kw": kw, "i": i}
    env = {"kH": kh, "kW": kw}
    wt = rand(i, o, kh, kw)
    same(fill("transpose_iohw", np.zeros((o, kh, kw, i), np.float32), loops, Wt=wt, **env),
         mpslayout.conv_transpose_weights(wt))
    kt = rand(kh, kw, o, i)
    same(fill("transpose_hwoi", np.zeros((o, kh, kw, i), np.float32), loops, Kt=kt, **env),
         mpslayout.conv_transpose_weights(kt, layout="HWOI"))
    g, ig, og = 2, 4, 4  # multiples of 4: what MPS accepts for groups
    wt = rand(g * ig, og, kh, kw)
    got = fill("transpose_groups", np.zeros((g * og, kh, kw, ig), np.float32),
               {"j": g, "o": og, "kh": kh, "kw": kw, "i": ig}, Wt=wt, Ig=ig, Og=og, **env)
    same(got, mpslayout.conv_transpose_weights(wt, groups=g))


@checks("conv_read", "conv_offset")
def test_conv_geometry_reproduces_framework_padding() -> None:
    for kw, d, stride, pad, x, kx in itertools.product(
        range(1, 7), (1, 2, 3), (1, 2), range(4), range(3), range(6)
    ):
        if kx >= kw:
            continue
        offset_x = value("conv_offset", kW=kw, d=d, pad_left=pad)
        assert offset_x == geometry.conv_offset(kw, d, pad)
        if kw % 2 == 0 and d > 1:
            continue  # the undocumented case (layouts.md section 8): only checked against code
        src = value("conv_read", x=x, stride=stride, offset_x=offset_x, kW=kw, d=d, kx=kx)
        assert src == x * stride - pad + kx * d  # PyTorch / ONNX Conv: out[x] reads these


def _transposed_framework(v: np.ndarray, w: np.ndarray, s: int, d: int, pb: int, pe: int,
                          op: int) -> np.ndarray:
    """1-D transposed convolution as PyTorch defines it: in[i]*w[k] lands at i*s + k*d - pb."""
    n, k = len(v), len(w)
    size = (n - 1) * s - pb - pe + (k - 1) * d + 1 + op
    out = np.zeros(size)
    for i, kk in itertools.product(range(n), range(k)):
        x = i * s + kk * d - pb
        if 0 <= x < size:
            out[x] += v[i] * w[kk]
    return out


@checks("transpose_read", "transpose_offset", "transpose_size")
def test_transposed_geometry_and_flip_reproduce_framework() -> None:
    """MPS's model (header): zeros between source pixels, then a convolution with the weights
    as given. The page's flip, kernelOffset and output size make it the framework's layer."""
    for kw, d, s, pb, pe, op in itertools.product(
        (1, 2, 3, 4, 5), (1, 2), (1, 2, 3), (0, 1, 2), (0, 1, 2), (0, 1)
    ):
        if op >= s and op >= d:  # PyTorch's own limit on output_padding
            continue
        v = rng.standard_normal(4)
        w = rng.standard_normal(kw)
        ref = _transposed_framework(v, w, s, d, pb, pe, op)
        size = value("transpose_size", size=4, stride=s, pad_begin=pb, pad_end=pe, kW=kw, d=d,
                     output_padding=op)
        assert size == len(ref) == geometry.transposed_out(4, kw, s, d, (pb, pe), op)
        koff = value("transpose_offset", kW=kw, d=d, pad_left=pb)
        assert koff == geometry.kernel_offset(kw, d, pb)
        stuffed = np.zeros((4 - 1) * s + 1)
        stuffed[::s] = v
        flipped = w[::-1]  # the rotation of section 3, in one dimension
        got = np.zeros(size)
        for x, kx in itertools.product(range(size), range(kw)):
            pos = value("transpose_read", x=x, kernel_offset_x=koff, kW=kw, d=d, kx=kx)
            if 0 <= pos < len(stuffed):  # MPSImageEdgeModeZero
                got[x] += stuffed[pos] * flipped[kx]
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------- section 4


@checks("fc_chw", "fc_hwc", "fc_apply")
def test_fully_connected() -> None:
    o, c, h, w = 3, 5, 2, 3  # H != W: the two readings of Apple's text differ here
    loops = {"o": o, "h": h, "w": w, "c": c}
    env = {"C": c, "H": h, "W": w}
    lin = rand(o, c * h * w)
    fc = mpslayout.fc_weights(lin, input_shape=(c, h, w))
    same(fill("fc_chw", np.zeros((o, h, w, c), np.float32), loops, L=lin, **env), fc)
    kd = rand(h * w * c, o)
    same(fill("fc_hwc", np.zeros((o, h, w, c), np.float32), loops, Kd=kd, **env),
         mpslayout.fc_weights(kd, input_shape=(h, w, c), layout="IO", flatten="HWC"))
    # what the layer computes on the MPS image equals PyTorch's Linear(flatten(x))
    x = rng.standard_normal((c, h, w))
    out = fill("fc_apply", np.zeros(o), {"o": o}, dst=fc.astype(np.float64),
               img=x.transpose(1, 2, 0), **env)
    np.testing.assert_allclose(out, lin.astype(np.float64) @ x.reshape(-1), rtol=1e-12)


# ----------------------------------------------------------------------- section 5


@checks("slices_nchw", "slices_nhwc")
def test_image_slices() -> None:
    n, c, h, w = 2, 5, 3, 2
    s = -(-c // 4)
    loops = {"n": n, "s": s, "y": h, "x": w, "k": 4}
    t = rand(n, c, h, w)
    same(fill("slices_nchw", np.zeros((n * s, h, w, 4), np.float32), loops, T=t, S=s, C=c),
         mpslayout.image_slices(t))
    t = rand(n, h, w, c)
    same(fill("slices_nhwc", np.zeros((n * s, h, w, 4), np.float32), loops, T=t, S=s, C=c),
         mpslayout.image_slices(t, layout="NHWC"))


# ----------------------------------------------------------------------- section 6


@checks("dense_rows", "dense_bias", "dense_transpose")
def test_dense_reshape() -> None:
    h, w, c, i = 2, 3, 4, 5
    n = h * w * c
    env = {"C": c, "H": h, "W": w}
    wd, b = rand(n, i), rand(n)
    rows, bias = mpslayout.dense_reshape(wd, b, shape=(h, w, c), order="CHW")
    same(fill("dense_rows", np.zeros((n, i), np.float32),
              {"y": h, "x": w, "c": c, "i": i}, Wd=wd, **env), rows)
    same(fill("dense_bias", np.zeros(n, np.float32), {"y": h, "x": w, "c": c}, b=b, **env), bias)
    same(fill("dense_transpose", np.zeros((c, h, w, i), np.float32),
              {"c": c, "kh": h, "kw": w, "i": i}, Wd=wd, **env),
         mpslayout.dense_reshape(wd, shape=(h, w, c), target="conv_transpose")[0])


@checks("subpixel_apply")
def test_subpixel_reproduces_dense_then_view() -> None:
    """The header's sub-pixel reshape, fed the converted rows, equals PyTorch's
    ``linear(v).view(C, r, r)`` read as an HWC image."""
    r, c, i = 2, 3, 5
    wd, b = rand(r * r * c, i), rand(r * r * c)
    v = rng.standard_normal(i)
    weights, bias = mpslayout.dense_reshape(wd, b, shape=(r, r, c), target="subpixel")
    io = weights.reshape(r * r * c, i).astype(np.float64) @ v + bias  # 1x1 conv, 1x1 input
    out = fill("subpixel_apply", np.zeros((r, r, c)), {"y": r, "x": r, "c": c},
               Io=io, r=r, C=c)
    framework = (wd.astype(np.float64) @ v + b).reshape(c, r, r).transpose(1, 2, 0)
    np.testing.assert_allclose(out, framework, rtol=1e-6)


def test_conv_transpose_target_reproduces_dense_then_view() -> None:
    """The transposed-convolution target run through section 3's MPS model (1x1 input, HxW
    kernel, stride 1, no padding) equals the dense layer and view, for a per-channel bias."""
    h, w, c, i = 2, 3, 4, 5
    wd = rand(h * w * c, i)
    per_channel = rand(c)
    b = np.repeat(per_channel, h * w)  # CHW order: constant over (y, x)
    v = rng.standard_normal(i)
    weights, bias = mpslayout.dense_reshape(wd, b, shape=(h, w, c), target="conv_transpose")
    koy = value("transpose_offset", kW=h, d=1, pad_left=0)
    kox = value("transpose_offset", kW=w, d=1, pad_left=0)
    out = np.zeros((h, w, c))
    for y, x, kh, kw in itertools.product(range(h), range(w), range(h), range(w)):
        py = value("transpose_read", x=y, kernel_offset_x=koy, kW=h, d=1, kx=kh)
        px = value("transpose_read", x=x, kernel_offset_x=kox, kW=w, d=1, kx=kw)
        if py == 0 and px == 0:  # the only pixel of the 1x1 source
            out[y, x] += weights[:, kh, kw].astype(np.float64) @ v
    out += bias
    framework = (wd.astype(np.float64) @ v + b).reshape(c, h, w).transpose(1, 2, 0)
    np.testing.assert_allclose(out, framework, rtol=1e-6)


@checks("reshape_slices")
def test_reshape_slices() -> None:
    (h1, w1, c1), (h2, w2, c2) = (2, 3, 6), (1, 4, 9)
    img = rand(1, h1, w1, c1)
    src = mpslayout.image_slices(img, layout="NHWC")
    s2 = -(-c2 // 4)

    def flat(s: int, y: int, x: int, k: int, **_: Any) -> int:
        return (y * w2 + x) * c2 + 4 * s + k

    got = fill("reshape_slices", np.zeros((s2, h2, w2, 4), np.float32),
               {"s": s2, "y": h2, "x": w2, "k": 4}, src=src, C2=c2,
               cs=lambda **a: flat(**a) % c1, xs=lambda **a: (flat(**a) // c1) % w1,
               ys=lambda **a: flat(**a) // (c1 * w1))
    same(got, mpslayout.reshape_slices(src, src=(h1, w1, c1), dst=(h2, w2, c2)))
    # the HWC reading: a row-major reshape of the NHWC image, sliced again
    same(got, mpslayout.image_slices(img.reshape(1, h2, w2, c2), layout="NHWC"))
