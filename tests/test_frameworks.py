"""Numerical checks of the MPS weight converters against real frameworks.

A framework layer (PyTorch, ONNX Runtime) is run on an NCHW input; the same weights are
converted with mpslayout and fed to the plain-numpy NHWC reference layers of
``nhwc_ref`` (written from the MPS geometry); the outputs must agree to float32 accuracy.
Keras/TF conventions are checked without Keras, by building their tensors as transposes
of the PyTorch ones.  Tests skip cleanly when a framework is not installed.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from nhwc_ref import conv2d_nhwc, conv_transpose2d_nhwc, fc_hwc, subpixel_1x1

import mpslayout

RTOL = 1e-5
ATOL = 1e-5


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch


def nchw_to_nhwc(t):
    a = t.detach().numpy() if hasattr(t, "detach") else np.asarray(t)
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def params(layer):
    w = layer.weight.detach().numpy().copy()
    b = None if layer.bias is None else layer.bias.detach().numpy().copy()
    return w, b


def assert_close(got, want):
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def pair(v):
    return v if isinstance(v, tuple) else (v, v)


# ------------------------------------------------------------ reference self-check


@pytest.mark.parametrize(
    ("groups", "stride", "padding", "dilation", "kernel"),
    [(1, 1, 1, 1, (3, 3)), (2, 2, 2, 2, (3, 5)), (4, 1, 0, 1, (5, 5)), (1, 2, 1, 2, (1, 3))],
)
def test_reference_conv_matches_torch_with_numpy_weights(
    torch, groups, stride, padding, dilation, kernel
):
    """The numpy reference itself (weights transposed by numpy, not mpslayout)."""
    conv = torch.nn.Conv2d(16, 8, kernel, stride=stride, padding=padding, dilation=dilation,
                           groups=groups)  # fmt: skip
    x = torch.randn(2, 16, 11, 13)
    with torch.no_grad():
        want = nchw_to_nhwc(conv(x))
    w, b = params(conv)
    ref = conv2d_nhwc(nchw_to_nhwc(x), w.transpose(0, 2, 3, 1), b, stride=stride,
                      padding=padding, dilation=dilation, groups=groups)  # fmt: skip
    assert_close(ref, want)


def test_reference_conv_transpose_matches_torch_with_numpy_weights(torch):
    ct = torch.nn.ConvTranspose2d(8, 6, (3, 4), stride=2, padding=1, output_padding=1, groups=2)
    x = torch.randn(2, 8, 5, 6)
    with torch.no_grad():
        want = nchw_to_nhwc(ct(x))
    w, b = params(ct)  # (I, O/g, kH, kW)
    i_g, o_g = 4, 3
    ohwi = np.concatenate(
        [w[j * i_g : (j + 1) * i_g, :, ::-1, ::-1].transpose(1, 2, 3, 0) for j in range(2)]
    )
    ref = conv_transpose2d_nhwc(nchw_to_nhwc(x), ohwi, b, stride=2, padding=1,
                                output_padding=1, groups=2)  # fmt: skip
    assert o_g * 2 == ohwi.shape[0]
    assert_close(ref, want)


# ------------------------------------------------------------ Conv2d


CONV_CASES = list(
    itertools.product([1, 2, 4], [1, 2], [0, 1, 2], [1, 2], [(1, 1), (3, 3), (5, 5), (3, 5)])
)


@pytest.mark.parametrize(("groups", "stride", "padding", "dilation", "kernel"), CONV_CASES)
def test_conv2d_torch(torch, groups, stride, padding, dilation, kernel):
    # I/g and O/g stay multiples of 4, so no MPSLayoutWarning is expected.
    conv = torch.nn.Conv2d(16, 16, kernel, stride=stride, padding=padding, dilation=dilation,
                           groups=groups, bias=True)  # fmt: skip
    x = torch.randn(2, 16, 11, 13)
    with torch.no_grad():
        want = nchw_to_nhwc(conv(x))
    w, b = params(conv)
    ohwi = mpslayout.conv_weights(w, groups=groups)
    assert ohwi.shape == (16, kernel[0], kernel[1], 16 // groups)
    assert ohwi.dtype == np.float32
    mb = mpslayout.bias(b)
    assert mb.dtype == np.float32
    assert mb.shape == (16,)
    got = conv2d_nhwc(nchw_to_nhwc(x), ohwi, mb, stride=stride, padding=padding,
                      dilation=dilation, groups=groups)  # fmt: skip
    assert_close(got, want)


def test_conv2d_torch_float16_weights(torch):
    conv = torch.nn.Conv2d(8, 12, 3, padding=1)
    x = torch.randn(1, 8, 7, 9)
    w, b = params(conv)
    w16 = mpslayout.conv_weights(w, dtype=np.float16)
    assert w16.dtype == np.float16
    np.testing.assert_array_equal(
        w16.view(np.uint16), w.transpose(0, 2, 3, 1).astype(np.float16).view(np.uint16)
    )
    conv.weight.data = torch.from_numpy(w.astype(np.float16).astype(np.float32))
    with torch.no_grad():
        want = nchw_to_nhwc(conv(x))
    got = conv2d_nhwc(nchw_to_nhwc(x), w16, b, padding=1)
    assert_close(got, want)


# ------------------------------------------------------------ ConvTranspose2d


CT_CASES = [
    c
    for c in itertools.product([1, 2], [1, 2], [0, 1], [0, 1], [1, 2], [(3, 3), (2, 2), (3, 4)])
    if c[3] < max(c[1], c[4])  # output_padding < stride or dilation
]


@pytest.mark.parametrize(
    ("groups", "stride", "padding", "output_padding", "dilation", "kernel"), CT_CASES
)
def test_conv_transpose2d_torch(torch, groups, stride, padding, output_padding, dilation,
                                kernel):  # fmt: skip
    ct = torch.nn.ConvTranspose2d(8, 8, kernel, stride=stride, padding=padding,
                                  output_padding=output_padding, groups=groups,
                                  dilation=dilation)  # fmt: skip
    x = torch.randn(2, 8, 5, 6)
    with torch.no_grad():
        want = nchw_to_nhwc(ct(x))
    w, b = params(ct)
    ohwi = mpslayout.conv_transpose_weights(w, groups=groups)
    assert ohwi.shape == (8, kernel[0], kernel[1], 8 // groups)
    got = conv_transpose2d_nhwc(nchw_to_nhwc(x), ohwi, mpslayout.bias(b), stride=stride,
                                padding=padding, output_padding=output_padding,
                                dilation=dilation, groups=groups)  # fmt: skip
    assert got.shape == want.shape
    assert_close(got, want)


def test_conv_transpose_no_flip_is_unrotated(torch):
    ct = torch.nn.ConvTranspose2d(4, 8, (3, 2))
    w, _ = params(ct)
    flipped = mpslayout.conv_transpose_weights(w)
    plain = mpslayout.conv_transpose_weights(w, flip=False)
    np.testing.assert_array_equal(plain, w.transpose(1, 2, 3, 0))
    np.testing.assert_array_equal(flipped, plain[:, ::-1, ::-1, :])


# ------------------------------------------------------------ depthwise


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"),
    [((3, 3), 1, 1), ((5, 3), 2, 2), ((1, 1), 1, 0), ((3, 5), 2, 0)],
)
def test_depthwise_torch(torch, kernel, stride, padding):
    c = 6
    conv = torch.nn.Conv2d(c, c, kernel, stride=stride, padding=padding, groups=c)
    x = torch.randn(2, c, 9, 10)
    with torch.no_grad():
        want = nchw_to_nhwc(conv(x))
    w, b = params(conv)
    dw = mpslayout.depthwise_weights(w)
    assert dw.shape == (c, *kernel)
    np.testing.assert_array_equal(mpslayout.depthwise_weights(w, in_channels=c), dw)
    got = conv2d_nhwc(nchw_to_nhwc(x), dw[..., None], b, stride=stride, padding=padding,
                      groups=c)  # fmt: skip
    assert_close(got, want)


@pytest.mark.parametrize(("kernel", "multiplier"), [((3, 3), 2), ((3, 5), 2), ((1, 1), 3)])
def test_depthwise_multiplier_via_expand(torch, kernel, multiplier):
    c = 5
    conv = torch.nn.Conv2d(c, c * multiplier, kernel, padding=1, groups=c)
    x = torch.randn(2, c, 8, 7)
    with torch.no_grad():
        want = nchw_to_nhwc(conv(x))
    w, b = params(conv)
    full = mpslayout.expand_depthwise(w, in_channels=c)
    assert full.shape == (c * multiplier, *kernel, c)
    got = conv2d_nhwc(nchw_to_nhwc(x), full, b, padding=1)
    assert_close(got, want)


# ------------------------------------------------------------ fully connected


@pytest.mark.parametrize(("c", "h", "w"), [(5, 3, 7), (1, 4, 4), (8, 1, 1), (3, 2, 5)])
def test_linear_after_flatten_torch(torch, c, h, w):
    lin = torch.nn.Linear(c * h * w, 11)
    x = torch.randn(3, c, h, w)
    with torch.no_grad():
        want = lin(torch.flatten(x, 1)).numpy()
    wt, b = params(lin)
    fc = mpslayout.fc_weights(wt, input_shape=(c, h, w))
    assert fc.shape == (11, h, w, c)
    got = fc_hwc(nchw_to_nhwc(x), fc, b)
    assert_close(got, want)


def test_linear_on_vector_torch(torch):
    lin = torch.nn.Linear(9, 4)
    v = torch.randn(3, 9)
    with torch.no_grad():
        want = lin(v).numpy()
    wt, b = params(lin)
    fc = mpslayout.fc_weights(wt)
    assert fc.shape == (4, 1, 1, 9)
    np.testing.assert_array_equal(fc.reshape(4, 9), wt)
    got = fc_hwc(v.numpy()[:, None, None, :], fc, b)
    assert_close(got, want)


# ------------------------------------------------------------ Dense + reshape


def test_dense_reshape_rows_torch(torch):
    h, w, c, i = 3, 4, 5, 6
    lin = torch.nn.Linear(i, h * w * c)
    v = torch.randn(4, i)
    with torch.no_grad():
        want = nchw_to_nhwc(lin(v).view(-1, c, h, w))
    wt, b = params(lin)
    rows, rb = mpslayout.dense_reshape(wt, b, shape=(h, w, c), order="CHW", target="rows")
    assert rows.shape == (h * w * c, i)
    assert rb.shape == (h * w * c,)
    assert rb.dtype == np.float32
    got = (v.numpy().astype(np.float64) @ rows.T.astype(np.float64) + rb).reshape(-1, h, w, c)
    assert_close(got, want)
    r2, b2 = mpslayout.dense_reshape(wt, None, shape=(h, w, c), order="CHW", target="rows")
    np.testing.assert_array_equal(r2, rows)
    assert b2 is None


@pytest.mark.parametrize(("r", "c"), [(4, 5), (2, 8), (3, 1)])
def test_dense_reshape_subpixel_torch(torch, r, c):
    i = 7
    lin = torch.nn.Linear(i, r * r * c)
    v = torch.randn(3, i)
    with torch.no_grad():
        want = nchw_to_nhwc(lin(v).view(-1, c, r, r))
    wt, b = params(lin)
    sw, sb = mpslayout.dense_reshape(wt, b, shape=(r, r, c), order="CHW", target="subpixel")
    assert sw.shape == (r * r * c, 1, 1, i)
    assert sb.shape == (r * r * c,)
    # The 1x1 convolution over the 1x1 input (MPS geometry), then the sub-pixel shuffle.
    dense = conv2d_nhwc(v.numpy()[:, None, None, :], sw, sb)
    assert dense.shape == (3, 1, 1, r * r * c)
    got = subpixel_1x1(dense[:, 0, 0, :], r, c)
    assert_close(got, want)


@pytest.mark.parametrize(("h", "w", "c"), [(3, 4, 5), (4, 4, 8), (2, 3, 1)])
def test_dense_reshape_conv_transpose_torch(torch, h, w, c):
    i = 6
    lin = torch.nn.Linear(i, h * w * c)
    per_channel = torch.randn(c)
    with torch.no_grad():
        lin.bias.copy_(per_channel.repeat_interleave(h * w))  # CHW: constant over (y, x)
    v = torch.randn(3, i)
    with torch.no_grad():
        want = nchw_to_nhwc(lin(v).view(-1, c, h, w))
    wt, b = params(lin)
    tw, tb = mpslayout.dense_reshape(wt, b, shape=(h, w, c), order="CHW",
                                     target="conv_transpose")  # fmt: skip
    assert tw.shape == (c, h, w, i)
    assert tb.shape == (c,)
    np.testing.assert_array_equal(tb, per_channel.numpy())
    got = conv_transpose2d_nhwc(v.numpy()[:, None, None, :], tw, tb)
    assert got.shape == (3, h, w, c)
    assert_close(got, want)


# ------------------------------------------------------------ Keras conventions


def test_keras_hwio_conv():
    rng = np.random.default_rng(0)
    for groups, (o, ig) in [(1, (8, 3)), (2, (8, 4))]:
        oihw = rng.standard_normal((o, ig, 3, 5)).astype(np.float32)
        hwio = np.ascontiguousarray(oihw.transpose(2, 3, 1, 0))
        want = mpslayout.conv_weights(oihw, groups=groups)
        np.testing.assert_array_equal(want, oihw.transpose(0, 2, 3, 1))
        got = mpslayout.conv_weights(hwio, layout="HWIO", groups=groups)
        np.testing.assert_array_equal(got, want)


def test_keras_hwoi_conv_transpose(torch):
    ct = torch.nn.ConvTranspose2d(6, 5, (3, 4), stride=2, padding=1)
    x = torch.randn(2, 6, 4, 5)
    with torch.no_grad():
        want = nchw_to_nhwc(ct(x))
    wt, b = params(ct)  # (I, O, kH, kW)
    hwoi = np.ascontiguousarray(wt.transpose(2, 3, 1, 0))  # Keras (kH, kW, O, I)
    got_w = mpslayout.conv_transpose_weights(hwoi, layout="HWOI")
    np.testing.assert_array_equal(got_w, mpslayout.conv_transpose_weights(wt))
    got = conv_transpose2d_nhwc(nchw_to_nhwc(x), got_w, b, stride=2, padding=1)
    assert_close(got, want)


def test_keras_hwcm_depthwise():
    rng = np.random.default_rng(1)
    c, kh, kw = 6, 3, 5
    w1 = rng.standard_normal((c, 1, kh, kw)).astype(np.float32)
    hwcm1 = np.ascontiguousarray(w1[:, 0].transpose(1, 2, 0)[..., None])
    np.testing.assert_array_equal(mpslayout.depthwise_weights(hwcm1, layout="HWCM"), w1[:, 0])
    np.testing.assert_array_equal(mpslayout.depthwise_weights(w1), w1[:, 0])
    m = 2
    w2 = rng.standard_normal((c * m, 1, kh, kw)).astype(np.float32)
    hwcm2 = np.ascontiguousarray(w2[:, 0].reshape(c, m, kh, kw).transpose(2, 3, 0, 1))
    a = mpslayout.expand_depthwise(w2, in_channels=c)
    bk = mpslayout.expand_depthwise(hwcm2, layout="HWCM")
    np.testing.assert_array_equal(bk, a)
    want = np.zeros((c * m, kh, kw, c), dtype=np.float32)
    for o in range(c * m):
        want[o, :, :, o // m] = w2[o, 0]
    np.testing.assert_array_equal(a, want)


def test_keras_io_dense_hwc(torch):
    c, h, w, o = 5, 3, 7, 4
    lin = torch.nn.Linear(c * h * w, o)
    wt, b = params(lin)  # (O, C*H*W), CHW flatten order
    kd = np.ascontiguousarray(wt.reshape(o, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, o))
    got = mpslayout.fc_weights(kd, input_shape=(h, w, c), layout="IO", flatten="HWC")
    want = mpslayout.fc_weights(wt, input_shape=(c, h, w))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(want, wt.reshape(o, c, h, w).transpose(0, 2, 3, 1))
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        ref = lin(torch.flatten(x, 1)).numpy()
    assert_close(fc_hwc(nchw_to_nhwc(x), got, b), ref)


def test_keras_io_dense_reshape_hwc():
    rng = np.random.default_rng(2)
    h, w, c, i = 2, 3, 4, 5
    wt = rng.standard_normal((c * h * w, i)).astype(np.float32)  # PyTorch (CHW rows, I)
    bt = rng.standard_normal(c * h * w).astype(np.float32)
    hwc_rows = wt.reshape(c, h, w, i).transpose(1, 2, 0, 3).reshape(h * w * c, i)
    kd = np.ascontiguousarray(hwc_rows.T)  # Keras (I, HWC)
    kb = np.ascontiguousarray(bt.reshape(c, h, w).transpose(1, 2, 0).reshape(-1))
    a_w, a_b = mpslayout.dense_reshape(wt, bt, shape=(h, w, c), order="CHW", target="rows")
    k_w, k_b = mpslayout.dense_reshape(kd, kb, shape=(h, w, c), layout="IO", order="HWC",
                                       target="rows")  # fmt: skip
    np.testing.assert_array_equal(a_w, hwc_rows)
    np.testing.assert_array_equal(a_b, kb)
    np.testing.assert_array_equal(k_w, hwc_rows)
    np.testing.assert_array_equal(k_b, kb)


# ------------------------------------------------------------ ONNX Runtime


@pytest.fixture(scope="module")
def helper():
    """``onnx.helper``; skips unless both onnx and onnxruntime are installed."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    return onnx.helper


def _onnx_run(nodes, x, initializers, out_rank=4):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{k}" for k in range(out_rank)])],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


ONNX_CONV_CASES = [
    # group, kernel, strides, pads (top, left, bottom, right), dilations
    (1, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (2, (3, 3), (2, 1), (1, 2, 0, 1), (1, 2)),
    (1, (5, 3), (1, 2), (2, 0, 1, 2), (1, 1)),
    (4, (3, 5), (2, 2), (0, 2, 2, 1), (2, 1)),
]


@pytest.mark.parametrize(("group", "kernel", "strides", "pads", "dilations"), ONNX_CONV_CASES)
def test_onnx_conv(helper, group, kernel, strides, pads, dilations):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 16, 11, 12)).astype(np.float32)
    w = (rng.standard_normal((16, 16 // group, *kernel)) * 0.2).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    top, left, bottom, right = pads
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=group,
                            kernel_shape=list(kernel), strides=list(strides),
                            pads=[top, left, bottom, right], dilations=list(dilations))  # fmt: skip
    want = nchw_to_nhwc(_onnx_run([node], x, {"w": w, "b": b}))
    got = conv2d_nhwc(nchw_to_nhwc(x), mpslayout.conv_weights(w, groups=group), b,
                      stride=strides, padding=pads, dilation=dilations, groups=group)  # fmt: skip
    assert got.shape == want.shape
    assert_close(got, want)


ONNX_CT_CASES = [
    # group, kernel, strides, pads, output_padding
    (1, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    (2, (3, 4), (2, 1), (1, 0, 0, 1), (0, 0)),
    (1, (2, 2), (1, 1), (0, 0, 0, 0), (0, 0)),
    (2, (5, 3), (2, 2), (2, 1, 1, 0), (1, 0)),
]


@pytest.mark.parametrize(("group", "kernel", "strides", "pads", "output_padding"), ONNX_CT_CASES)
def test_onnx_conv_transpose(helper, group, kernel, strides, pads, output_padding):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 8, 5, 6)).astype(np.float32)
    w = (rng.standard_normal((8, 8 // group, *kernel)) * 0.2).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], group=group,
                            kernel_shape=list(kernel), strides=list(strides), pads=list(pads),
                            output_padding=list(output_padding))  # fmt: skip
    want = nchw_to_nhwc(_onnx_run([node], x, {"w": w, "b": b}))
    ohwi = mpslayout.conv_transpose_weights(w, groups=group)
    got = conv_transpose2d_nhwc(nchw_to_nhwc(x), ohwi, b, stride=strides, padding=pads,
                                output_padding=output_padding, groups=group)  # fmt: skip
    assert got.shape == want.shape
    assert_close(got, want)


def test_onnx_flatten_gemm(helper):
    rng = np.random.default_rng(5)
    c, h, w, o = 5, 3, 7, 9
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    lw = (rng.standard_normal((o, c * h * w)) * 0.1).astype(np.float32)
    lb = rng.standard_normal(o).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "lw", "lb"], ["y"], transB=1),
    ]
    want = _onnx_run(nodes, x, {"lw": lw, "lb": lb}, out_rank=2)
    got = fc_hwc(nchw_to_nhwc(x), mpslayout.fc_weights(lw, input_shape=(c, h, w)), lb)
    assert_close(got, want)
