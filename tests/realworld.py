"""Complete (small-input) versions of the networks people ship, exported the ways people do.

Each architecture is written in torch after its published form, with trained-looking
weights (seeded random parameters, batch-norm running statistics gathered by a few forward
passes in train mode on non-centred data, then eval):

- ``dbnet``: the full MobileNetV3-small backbone (16 -> 576 channels, eleven inverted
  residual blocks, squeeze-excitation with HardSigmoid, HardSwish) and a PaddleOCR-style
  DB head: DBFPN (1x1 laterals, nearest Upsample + Add, 3x3 smoothing convs, Upsample to
  1/4 and Concat) and the probability head (Conv-BN-ReLU, two ConvTranspose-BN-ReLU,
  Sigmoid). Input (1, 3, 64, 64).
- ``resnet_cls``: a ResNet18-style text-direction classifier (7x7 stem, max pool, four
  stages of two basic blocks, widths 16..128) with flatten of the 2x2 map + Linear.
- ``crnn``: a CRNN recognizer: conv stack with (2, 1) pools down to height 1, squeeze,
  permute to (T, N, C), bidirectional nn.LSTM, Linear to 37 classes. Input (1, 3, 32, 128).
- ``svtr``: a transformer-style recognizer: conv stem, flatten to (N, T, C), pre-norm
  block with nn.LayerNorm, nn.MultiheadAttention and a GELU MLP, final LayerNorm, Linear.
- ``yolov5``: a YOLOv5n-style detector: Conv-BN-SiLU, C3 blocks, SPPF (three chained 5x5
  max pools + Concat), a PAN neck with nearest Upsample and Concat, a Detect head with
  three scales reshaped to (N, na, H, W, no) and Sigmoid.

``VARIANTS`` gives the export settings applied to each: opset 11/13/17, dynamic batch /
height / width (symbolic dims), ``do_constant_folding`` on and off, and the dynamo exporter
(when onnxscript is installed). ``tf2onnx_mimic`` and ``paddle2onnx_mimic`` are written
with onnx.helper in the shapes those converters emit.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from corpus import CorpusModel
from corpus import _Graph as _G

# ----------------------------------------------------------------------- torch modules


def _nn() -> Any:
    import torch

    return torch.nn


def _train_bn(net: Any, dims: tuple[int, ...], seed: int) -> None:
    """Running statistics of a trained network: a few train-mode passes on shifted,
    scaled data (so means are not 0 and variances not 1), affine parameters off 1/0."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            m.momentum = 0.5
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
        if isinstance(m, torch.nn.LayerNorm):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.normalized_shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.normalized_shape, generator=g) * 0.1)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(2, *dims[1:], generator=g) * 1.5 + 0.3)
    net.eval()


def _mbv3_small() -> Any:
    nn = _nn()
    import torch

    class SE(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            mid = max(8, (c // 4 + 4) // 8 * 8)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(c, mid, 1)
            self.fc2 = nn.Conv2d(mid, c, 1)

        def forward(self, x: Any) -> Any:
            s = self.fc2(torch.relu(self.fc1(self.pool(x))))
            return x * nn.functional.hardsigmoid(s)

    def cbn(i: int, o: int, k: int, s: int, act: Any, groups: int = 1) -> list[Any]:
        layers = [nn.Conv2d(i, o, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(o)]
        return layers + ([act()] if act else [])

    class Block(nn.Module):
        def __init__(self, i: int, k: int, e: int, o: int, se: bool, hs: bool,
                     s: int) -> None:
            super().__init__()
            act = nn.Hardswish if hs else nn.ReLU
            layers = cbn(i, e, 1, 1, act) if e != i else []
            layers += cbn(e, e, k, s, act, groups=e)
            if se:
                layers.append(SE(e))
            layers += cbn(e, o, 1, 1, None)
            self.body = nn.Sequential(*layers)
            self.res = s == 1 and i == o

        def forward(self, x: Any) -> Any:
            y = self.body(x)
            return x + y if self.res else y

    # torchvision's mobilenet_v3_small configuration (kernel, expand, out, SE, HS, stride)
    cfg = [(3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2),
           (3, 88, 24, False, False, 1), (5, 96, 40, True, True, 2),
           (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
           (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1),
           (5, 288, 96, True, True, 2), (5, 576, 96, True, True, 1),
           (5, 576, 96, True, True, 1)]

    class Backbone(nn.Module):
        """Returns the stride 4, 8, 16, 32 maps (16, 24, 48, 576 channels)."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(*cbn(3, 16, 3, 2, nn.Hardswish))
            blocks, c = [], 16
            for k, e, o, se, hs, s in cfg:
                blocks.append(Block(c, k, e, o, se, hs, s))
                c = o
            self.blocks = nn.ModuleList(blocks)
            self.last = nn.Sequential(*cbn(96, 576, 1, 1, nn.Hardswish))

        def forward(self, x: Any) -> list[Any]:
            x = self.stem(x)
            outs = []
            for i, b in enumerate(self.blocks):
                x = b(x)
                if i in (0, 2, 7):
                    outs.append(x)
            outs.append(self.last(x))
            return outs

    class DBNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = Backbone()
            inner = 32
            self.lat = nn.ModuleList(nn.Conv2d(c, inner, 1, bias=False)
                                     for c in (16, 24, 48, 576))
            self.smooth = nn.ModuleList(nn.Conv2d(inner, inner // 4, 3, padding=1,
                                                  bias=False) for _ in range(4))
            q = inner // 4
            self.head = nn.Sequential(
                nn.Conv2d(inner, q, 3, padding=1, bias=False), nn.BatchNorm2d(q), nn.ReLU(),
                nn.ConvTranspose2d(q, q, 2, 2), nn.BatchNorm2d(q), nn.ReLU(),
                nn.ConvTranspose2d(q, 1, 2, 2), nn.Sigmoid())

        def forward(self, x: Any) -> Any:
            c2, c3, c4, c5 = self.backbone(x)
            up = nn.functional.interpolate
            in5, in4, in3, in2 = (lat(c) for lat, c in zip(self.lat[::-1],
                                                             (c5, c4, c3, c2)))
            out4 = in4 + up(in5, scale_factor=2.0, mode="nearest")
            out3 = in3 + up(out4, scale_factor=2.0, mode="nearest")
            out2 = in2 + up(out3, scale_factor=2.0, mode="nearest")
            p5 = up(self.smooth[3](in5), scale_factor=8.0, mode="nearest")
            p4 = up(self.smooth[2](out4), scale_factor=4.0, mode="nearest")
            p3 = up(self.smooth[1](out3), scale_factor=2.0, mode="nearest")
            p2 = self.smooth[0](out2)
            return self.head(torch.cat([p5, p4, p3, p2], 1))

    return DBNet()


def _resnet_cls() -> Any:
    nn = _nn()
    import torch

    class Basic(nn.Module):
        def __init__(self, i: int, o: int, s: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(i, o, 3, s, 1, bias=False)
            self.b1 = nn.BatchNorm2d(o)
            self.c2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(o)
            self.down = (nn.Sequential(nn.Conv2d(i, o, 1, s, bias=False), nn.BatchNorm2d(o))
                         if s != 1 or i != o else None)

        def forward(self, x: Any) -> Any:
            y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            return torch.relu(y + (self.down(x) if self.down is not None else x))

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
            layers, c = [], 16
            for o, s in ((16, 1), (32, 2), (64, 2), (128, 2)):
                layers += [Basic(c, o, s), Basic(o, o, 1)]
                c = o
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(128 * 2 * 2, 4)

        def forward(self, x: Any) -> Any:
            return self.fc(torch.flatten(self.layers(self.stem(x)), 1))

    return ResNet()


def _crnn() -> Any:
    nn = _nn()

    class CRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()

            def c(i: int, o: int, bn: bool = False) -> list[Any]:
                return [nn.Conv2d(i, o, 3, 1, 1, bias=not bn)] + (
                    [nn.BatchNorm2d(o)] if bn else []) + [nn.ReLU()]

            self.cnn = nn.Sequential(
                *c(3, 16), nn.MaxPool2d(2, 2), *c(16, 32), nn.MaxPool2d(2, 2),
                *c(32, 48, True), *c(48, 48), nn.MaxPool2d((2, 1), (2, 1)),
                *c(48, 64, True), *c(64, 64), nn.MaxPool2d((2, 1), (2, 1)),
                *c(64, 64, True), nn.MaxPool2d((2, 1), (2, 1)))
            self.rnn = nn.LSTM(64, 32, bidirectional=True)
            self.fc = nn.Linear(64, 37)

        def forward(self, x: Any) -> Any:
            f = self.cnn(x).squeeze(2).permute(2, 0, 1)  # (T, N, C)
            y, _ = self.rnn(f)
            return self.fc(y)

    return CRNN()


def _svtr() -> Any:
    nn = _nn()

    class Block(nn.Module):
        def __init__(self, c: int, heads: int) -> None:
            super().__init__()
            self.n1 = nn.LayerNorm(c)
            self.attn = nn.MultiheadAttention(c, heads, batch_first=True)
            self.n2 = nn.LayerNorm(c)
            self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))

        def forward(self, x: Any) -> Any:
            h = self.n1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.mlp(self.n2(x))

    class Recognizer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.GELU(),
                nn.Conv2d(24, 48, 3, 2, 1, bias=False), nn.BatchNorm2d(48), nn.GELU(),
                nn.Conv2d(48, 48, 3, (2, 1), 1, bias=False), nn.BatchNorm2d(48), nn.GELU())
            self.block = Block(48, 4)
            self.norm = nn.LayerNorm(48)
            self.fc = nn.Linear(48, 37)

        def forward(self, x: Any) -> Any:
            f = self.stem(x).flatten(2).transpose(1, 2)  # (N, T, C)
            return self.fc(self.norm(self.block(f)))

    return Recognizer()


def _yolov5() -> Any:
    nn = _nn()
    import torch

    class Conv(nn.Module):
        def __init__(self, i: int, o: int, k: int = 1, s: int = 1, p: int | None = None):
            super().__init__()
            self.conv = nn.Conv2d(i, o, k, s, k // 2 if p is None else p, bias=False)
            self.bn = nn.BatchNorm2d(o)
            self.act = nn.SiLU()

        def forward(self, x: Any) -> Any:
            return self.act(self.bn(self.conv(x)))

    class Bottleneck(nn.Module):
        def __init__(self, c: int, shortcut: bool) -> None:
            super().__init__()
            self.cv1, self.cv2, self.add = Conv(c, c), Conv(c, c, 3), shortcut

        def forward(self, x: Any) -> Any:
            y = self.cv2(self.cv1(x))
            return x + y if self.add else y

    class C3(nn.Module):
        def __init__(self, i: int, o: int, shortcut: bool = True) -> None:
            super().__init__()
            h = o // 2
            self.cv1, self.cv2, self.cv3 = Conv(i, h), Conv(i, h), Conv(2 * h, o)
            self.m = Bottleneck(h, shortcut)

        def forward(self, x: Any) -> Any:
            return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))

    class SPPF(nn.Module):
        def __init__(self, i: int, o: int) -> None:
            super().__init__()
            self.cv1, self.cv2 = Conv(i, i // 2), Conv(i // 2 * 4, o)
            self.m = nn.MaxPool2d(5, 1, 2)

        def forward(self, x: Any) -> Any:
            x = self.cv1(x)
            y1 = self.m(x)
            y2 = self.m(y1)
            return self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1))

    class YOLO(nn.Module):
        na, nc = 3, 3

        def __init__(self) -> None:
            super().__init__()
            self.b0 = Conv(3, 8, 6, 2, 2)
            self.b1, self.b2 = Conv(8, 16, 3, 2), C3(16, 16)
            self.b3, self.b4 = Conv(16, 32, 3, 2), C3(32, 32)
            self.b5, self.b6 = Conv(32, 64, 3, 2), C3(64, 64)
            self.b7, self.b8 = Conv(64, 128, 3, 2), C3(128, 128)
            self.sppf = SPPF(128, 128)
            self.h10, self.h13 = Conv(128, 64), C3(128, 64, False)
            self.h14, self.h17 = Conv(64, 32), C3(64, 32, False)
            self.h18, self.h20 = Conv(32, 32, 3, 2), C3(64, 64, False)
            self.h21, self.h23 = Conv(64, 64, 3, 2), C3(128, 128, False)
            no = self.na * (5 + self.nc)
            self.det = nn.ModuleList(nn.Conv2d(c, no, 1) for c in (32, 64, 128))
            self.up = nn.Upsample(scale_factor=2, mode="nearest")

        def forward(self, x: Any) -> Any:
            x = self.b2(self.b1(self.b0(x)))
            p3 = self.b4(self.b3(x))
            p4 = self.b6(self.b5(p3))
            x10 = self.h10(self.sppf(self.b8(self.b7(p4))))
            x14 = self.h14(self.h13(torch.cat([self.up(x10), p4], 1)))
            o3 = self.h17(torch.cat([self.up(x14), p3], 1))
            o4 = self.h20(torch.cat([self.h18(o3), x14], 1))
            o5 = self.h23(torch.cat([self.h21(o4), x10], 1))
            outs = []
            for det, f in zip(self.det, (o3, o4, o5)):
                y = det(f)
                n, _, h, w = y.shape
                y = y.view(n, self.na, 5 + self.nc, h, w).permute(0, 1, 3, 4, 2).sigmoid()
                outs.append(y.reshape(n, -1, 5 + self.nc))
            return torch.cat(outs, 1)

    return YOLO()


ARCHS: dict[str, tuple[Callable[[], Any], tuple[int, ...], int, str]] = {
    # name: (module builder, input dims, seed, what it stands for)
    "dbnet": (_mbv3_small, (1, 3, 64, 64), 21,
              "PaddleOCR DB text detector: MobileNetV3-small + DBFPN + DB head"),
    "resnet_cls": (_resnet_cls, (1, 3, 64, 64), 22,
                   "ResNet18-style text-direction classifier, flatten + Linear"),
    "crnn": (_crnn, (1, 3, 32, 128), 23, "CRNN recognizer: conv stack + BiLSTM + Linear"),
    "svtr": (_svtr, (1, 3, 32, 128), 24,
             "attention recognizer: conv stem + LayerNorm/MHA/GELU-MLP block + Linear"),
    "yolov5": (_yolov5, (1, 3, 64, 64), 25, "YOLOv5n-style detector: C3, SPPF, PAN, Detect"),
}


# with symbolic H and W, the size a user passes with --input-dims (other than the traced
# one): MobileNetV3's 5x5 depthwise convolutions at stride 32 need a map of 3 or more
# pixels for every tap to read inside it, so 96 rather than 64
DYNAMIC_DIMS = {"dbnet": (1, 3, 96, 96), "yolov5": (1, 3, 96, 96), "resnet_cls": (1, 3, 64, 64)}


@functools.cache
def module(name: str) -> Any:
    """The trained-looking torch module of architecture ``name`` (cached, eval mode)."""
    import torch

    build, dims, seed, _ = ARCHS[name]
    torch.manual_seed(seed)
    net = build()
    _train_bn(net, dims, seed)
    return net


# ----------------------------------------------------------------------- export variants

# variant: (opset, dynamic axes ("" none, "b" batch, "bhw" batch+height+width),
#           do_constant_folding, dynamo)
VARIANTS: dict[str, tuple[int, str, bool, bool]] = {
    "op17": (17, "", True, False),
    "op11_bhw": (11, "bhw", True, False),
    "op14_bhw": (14, "bhw", True, False),  # scaled_dot_product_attention needs 14
    "op13_nofold": (13, "", False, False),
    "op17_b_nofold": (17, "b", False, False),
    "dynamo": (18, "", True, True),
}


def has_onnxscript() -> bool:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _exported(name: str, variant: str) -> Any:
    import onnx
    import torch

    net = module(name)
    dims = ARCHS[name][1]
    opset, dyn, fold, dynamo = VARIANTS[variant]
    x = torch.zeros(dims)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated in torch 2.9+
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(net, (x,), dynamo=True, opset_version=opset,
                                     input_names=["x"], output_names=["out"],
                                     do_constant_folding=fold, verbose=False)
            prog.optimize()
            return prog.model_proto
        axes = {"b": {0: "batch"}, "bhw": {0: "batch", 2: "height", 3: "width"}}.get(dyn)
        torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["out"],
                          dynamic_axes={"x": axes} if axes else None,
                          do_constant_folding=fold)
    return onnx.load_from_string(buf.getvalue())


def build(name: str, variant: str = "op17") -> CorpusModel:
    """Architecture ``name`` exported as ``variant`` (a fresh copy of the cached proto)."""
    import onnx

    if name in MIMICS:
        cm = MIMICS[name]()
        return cm
    model = onnx.ModelProto()
    model.CopyFrom(_exported(name, variant))
    dims = ARCHS[name][1]
    symbolic = ["x"] if VARIANTS[variant][1] else []
    if "w" in VARIANTS[variant][1]:
        dims = DYNAMIC_DIMS.get(name, dims)
    return CorpusModel(f"{name}_{variant}", model, {"x": dims}, f"{ARCHS[name][3]}, "
                       f"{variant}", module(name), symbolic)


# ----------------------------------------------------------------------- other converters


def tf2onnx_mimic() -> CorpusModel:
    """What tf2onnx makes of a Keras CNN classifier: an NHWC input with Transpose nodes
    around the convolutions, Conv without bias + Add of a (1, C, 1, 1) bias, BN as Mul/Add
    (tf2onnx folds FusedBatchNorm into a scale and shift), ReLU6 as Clip with min/max
    inputs, a depthwise Conv, Transpose back to NHWC, Keras' Flatten (HWC order) as
    Reshape, and Dense as MatMul + Add; symbolic batch ("unk__0")."""
    g = _G(31)
    x = g.node("Transpose", ["input_1"], "transpose_in", perm=[0, 3, 1, 2])
    lo, hi = g.const("clip_lo", np.array(0, np.float32)), g.const("clip_hi",
                                                                   np.array(6, np.float32))
    c = 3
    for i, (o, k, s, dw) in enumerate([(16, 3, 2, False), (16, 3, 1, True), (24, 1, 1, False),
                                       (24, 3, 2, True), (32, 1, 1, False)]):
        if dw:
            w = g.weight(f"conv{i}/depthwise_kernel", o, 1, k, k, fan_in=k * k)
            x = g.node("Conv", [x, w], f"conv{i}/depthwise", group=o, strides=[s, s],
                       pads=[k // 2] * 4)
        else:
            w = g.weight(f"conv{i}/kernel", o, c, k, k, fan_in=c * k * k)
            x = g.node("Conv", [x, w], f"conv{i}/Conv2D", strides=[s, s],
                       pads=[0, 0, 1, 1] if s == 2 else [k // 2] * 4)
        x = g.node("Add", [x, g.vec(f"conv{i}/bias", (1, o, 1, 1), -0.2, 0.2)],
                   f"conv{i}/BiasAdd")
        x = g.node("Mul", [x, g.vec(f"bn{i}/scale", (1, o, 1, 1), 0.5, 1.5)], f"bn{i}/mul")
        x = g.node("Add", [x, g.vec(f"bn{i}/shift", (1, o, 1, 1), -0.3, 0.3)], f"bn{i}/add")
        x = g.node("Clip", [x, lo, hi], f"relu6_{i}")
        c = o
    x = g.node("Transpose", [x], "transpose_out", perm=[0, 2, 3, 1])  # (N, 4, 4, 32)
    x = g.node("Reshape", [x, g.const("flatten/shape", np.array([-1, 4 * 4 * c], np.int64))],
               "flatten/Reshape")
    x = g.node("MatMul", [x, g.weight("dense/kernel", 4 * 4 * c, 10, fan_in=4 * 4 * c)],
               "dense/MatMul")
    x = g.node("Add", [x, g.vec("dense/bias", (10,), -0.1, 0.1)], "dense/BiasAdd")
    x = g.node("Softmax", [x], "dense/Softmax", axis=-1)
    dims = {"input_1": (1, 16, 16, 3)}
    return CorpusModel("tf2onnx_mimic", g.model({"input_1": ["unk__0", 16, 16, 3]}, [x], 13),
                       dims, "tf2onnx: NHWC + Transposes, Conv + Add bias, Clip ReLU6",
                       None, ["input_1"])


def paddle2onnx_mimic() -> CorpusModel:
    """What paddle2onnx makes of a PaddleOCR MobileNetV3 (the det/cls models): Conv +
    BatchNormalization (not folded), hardswish as ``x * HardSigmoid(x, alpha=1/6,
    beta=0.5)``, the SE gate as HardSigmoid(alpha=0.2, beta=0.5), elementwise_add with axis
    broadcast (a (C, 1, 1) bias), Resize nearest (asymmetric/floor) and linear
    (half_pixel) with empty roi and scales given as initializers, Concat; symbolic
    batch/height/width ("p2o.DynamicDimension.N")."""
    g = _G(37)
    x, c = "x", 3
    eps = 1e-5

    def conv_bn(x: str, i: int, cin: int, o: int, k: int, s: int, groups: int = 1) -> str:
        w = g.weight(f"conv{i}_weights", o, cin // groups, k, k, fan_in=cin // groups * k * k)
        x = g.node("Conv", [x, w], f"p2o.Conv.{i}", group=groups, strides=[s, s],
                   pads=[k // 2] * 4, dilations=[1, 1], kernel_shape=[k, k])
        bn = [g.vec(f"bn{i}_scale", (o,), 0.5, 1.5), g.vec(f"bn{i}_offset", (o,), -0.2, 0.2),
              g.vec(f"bn{i}_mean", (o,), -0.3, 0.3), g.vec(f"bn{i}_variance", (o,), 0.5, 2)]
        return g.node("BatchNormalization", [x, *bn], f"p2o.BatchNormalization.{i}",
                      epsilon=eps, momentum=0.9)

    def hswish(x: str, i: int) -> str:
        h = g.node("HardSigmoid", [x], f"p2o.HardSigmoid.{i}", alpha=1 / 6, beta=0.5)
        return g.node("Mul", [x, h], f"p2o.Mul.{i}")

    x = hswish(conv_bn(x, 0, c, 16, 3, 2), 0)                     # 16 @ 1/2
    x = hswish(conv_bn(x, 1, 16, 16, 3, 1, groups=16), 1)
    # squeeze-excitation as PaddleOCR writes it
    s = g.node("GlobalAveragePool", [x], "p2o.GlobalAveragePool.0")
    s = g.node("Conv", [s, g.weight("se_1_weights", 8, 16, 1, 1, fan_in=16)], "p2o.Conv.se1")
    s = g.node("Add", [s, g.vec("se_1_offset", (8, 1, 1), -0.1, 0.1)], "p2o.Add.se1")
    s = g.node("Relu", [s], "p2o.Relu.se")
    s = g.node("Conv", [s, g.weight("se_2_weights", 16, 8, 1, 1, fan_in=8)], "p2o.Conv.se2")
    s = g.node("Add", [s, g.vec("se_2_offset", (16, 1, 1), -0.1, 0.1)], "p2o.Add.se2")
    s = g.node("HardSigmoid", [s], "p2o.HardSigmoid.se", alpha=0.2, beta=0.5)
    x = g.node("Mul", [x, s], "p2o.Mul.se")
    c2 = hswish(conv_bn(x, 2, 16, 24, 3, 2), 2)                   # 24 @ 1/4
    c3 = hswish(conv_bn(c2, 3, 24, 32, 3, 2), 3)                  # 32 @ 1/8
    lat = g.node("Conv", [c3, g.weight("lat_weights", 24, 32, 1, 1, fan_in=32)], "p2o.Conv.lat")
    roi = g.const("p2o.roi", np.zeros(0, np.float32))
    sc = g.const("p2o.scales", np.array([1, 1, 2, 2], np.float32))
    up = g.node("Resize", [lat, roi, sc], "p2o.Resize.0", mode="nearest",
                coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    f = g.node("Add", [c2, up], "p2o.Add.fpn")
    lin = g.node("Resize", [c3, roi, sc], "p2o.Resize.1", mode="linear",
                 coordinate_transformation_mode="half_pixel")
    f = g.node("Concat", [f, lin], "p2o.Concat.0", axis=1)           # 24 + 32 = 56
    y = g.node("Conv", [f, g.weight("head_weights", 8, 56, 3, 3, fan_in=56 * 9)], "p2o.Conv.h",
               pads=[1, 1, 1, 1])
    y = g.node("Add", [y, g.vec("head_offset", (8, 1, 1), -0.1, 0.1)], "p2o.Add.h")
    y = g.node("Relu", [y], "p2o.Relu.h")
    y = g.node("ConvTranspose", [y, g.weight("up_weights", 8, 1, 2, 2, fan_in=8)],
               "p2o.ConvTranspose.0", strides=[2, 2], kernel_shape=[2, 2])
    y = g.node("Add", [y, g.vec("up_offset", (1, 1, 1), -0.1, 0.1)], "p2o.Add.up")
    y = g.node("Sigmoid", [y], "p2o.Sigmoid.0")
    d = "p2o.DynamicDimension."
    dims = {"x": (1, 3, 32, 32)}
    return CorpusModel("paddle2onnx_mimic",
                       g.model({"x": [d + "0", 3, d + "1", d + "2"]}, [y], 11), dims,
                       "paddle2onnx: PaddleOCR MobileNetV3 shapes", None, ["x"])


MIMICS: dict[str, Callable[[], CorpusModel]] = {
    "tf2onnx_mimic": tf2onnx_mimic,
    "paddle2onnx_mimic": paddle2onnx_mimic,
}
