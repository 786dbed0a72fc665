"""A corpus of small models from real architectures, in the shapes other exporters emit.

Each builder returns a :class:`CorpusModel`: the ``onnx.ModelProto``, the torch module it was
exported from (``None`` for graphs written with ``onnx.helper``), the concrete input dims to
run it with, and which exporter's shape it mimics. Weights are random but seeded, with the
magnitudes of a trained network (PyTorch's default initialisation, batch-norm statistics
away from 0/1), and sizes are small so that a test exporting every model stays fast.

Two families:

- ``torch.onnx.export`` (TorchScript exporter, ``dynamo=False``: the dynamo exporter needs
  onnxscript) of small torch modules written after the real architectures: a
  MobileNetV3 block with a DB text-detection head, a ResNet basic block, a small UNet, a
  YOLO-style head, a Linear after a flatten. torch 2.x exports BatchNormalization folded
  into the convolution in eval mode, as real exported files have it.
- ``onnx.helper`` graphs that mimic what other exporters (tf2onnx, paddle2onnx, older
  torch, hand-edited graphs) emit: a ConvTranspose without bias followed by an ``Add`` of a
  (1, C, 1, 1) constant, Conv followed by ``Mul``/``Add`` affine pairs, HardSwish spelled
  ``Add``/``Clip``/``Mul``/``Div`` with Clip bounds as inputs, symbolic batch/H/W dims,
  LayerNorm decomposed into ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add, an attention
  block with ``MatMul`` on (N, T, C) sequences, Flatten + MatMul + Add with symbolic dims, a
  broadcasting ``Add`` of two feature maps, normalisation layers with learned tensors, and
  an LSTM.

``NAMES`` lists every model; ``build(name)`` returns a fresh copy (the protos are cached,
so callers may modify what they get); ``feeds(cm)`` gives a seeded input for each graph
input at ``cm.input_dims``.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OPSET = 17


@dataclass
class CorpusModel:
    """One corpus entry. ``input_dims``: concrete dims of every graph input (what a test
    passes to ``export(input_dims=...)`` and feeds ONNX Runtime); ``symbolic``: the inputs
    whose dims in the file are symbolic (dim_param); ``mimics``: the exporter shape."""

    name: str
    model: Any
    input_dims: dict[str, tuple[int, ...]]
    mimics: str
    torch_module: Any = None
    symbolic: list[str] = field(default_factory=list)


def _onnx() -> Any:
    import onnx

    return onnx


# ----------------------------------------------------------------------- torch models


def _torch() -> Any:
    import torch

    return torch


def _randomise_bn(module: Any, gen: Any) -> None:
    """Batch-norm statistics and affine parameters of a trained network: means around 0.1,
    variances around 1 but not 1, gammas around 1, betas around 0."""
    torch = _torch()
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)


def _export_torch(module: Any, dims: dict[str, tuple[int, ...]],
                  dynamic: dict[str, dict[int, str]] | None = None) -> Any:
    torch = _torch()
    onnx = _onnx()
    module.eval()
    args = tuple(torch.zeros(d) for d in dims.values())
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated in torch 2.9+
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, dynamo=False, opset_version=OPSET,
                          input_names=list(dims), output_names=["out"],
                          dynamic_axes=dynamic, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def _mobilenetv3_db() -> CorpusModel:
    """torch.onnx.export of a MobileNetV3 inverted-residual block with squeeze-excitation
    (HardSwish, HardSigmoid, AdaptiveAvgPool, Mul) and a DB (differentiable binarization)
    text-detection head: Conv-BN-ReLU, two stride-2 ConvTranspose (with BN, so the exporter
    folds it), Sigmoid, and an FPN-style nearest upsample + Add."""
    torch = _torch()
    nn = torch.nn
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)

    class SE(nn.Module):
        def __init__(self, c: int, r: int = 4) -> None:
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(c, c // r, 1)
            self.fc2 = nn.Conv2d(c // r, c, 1)
            self.hsig = nn.Hardsigmoid()

        def forward(self, x: Any) -> Any:
            return x * self.hsig(self.fc2(torch.relu(self.fc1(self.pool(x)))))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8),
                                      nn.Hardswish())
            self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16),
                                        nn.Hardswish())
            self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1, groups=16, bias=False),
                                    nn.BatchNorm2d(16), nn.Hardswish())
            self.se = SE(16)
            self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
            self.lateral = nn.Conv2d(8, 8, 1)
            self.head = nn.Sequential(
                nn.Conv2d(8, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                nn.ConvTranspose2d(4, 4, 2, 2), nn.BatchNorm2d(4), nn.ReLU(),
                nn.ConvTranspose2d(4, 1, 2, 2), nn.Sigmoid())

        def forward(self, x: Any) -> Any:
            c1 = self.stem(x)
            y = self.project(self.se(self.dw(self.expand(c1))))
            up = torch.nn.functional.interpolate(y, scale_factor=2.0, mode="nearest")
            return self.head(up + self.lateral(c1))

    net = Net()
    _randomise_bn(net, gen)
    dims = {"x": (1, 3, 32, 32)}
    return CorpusModel("mobilenetv3_db", _export_torch(net, dims), dims,
                       "torch.onnx.export (TorchScript) of a MobileNetV3 block + DB head",
                       net)


def _resnet_block() -> CorpusModel:
    """torch.onnx.export of a ResNet basic block with a stride-2 projection shortcut
    (Conv-BN folded by the exporter, Add, ReLU), global average pool, Flatten and a Gemm
    classifier: the torchvision ResNet shape."""
    torch = _torch()
    nn = torch.nn
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(4, 8, 3, 2, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 8, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(8)
            self.down = nn.Sequential(nn.Conv2d(4, 8, 1, 2, bias=False), nn.BatchNorm2d(8))
            self.fc = nn.Linear(8, 10)

        def forward(self, x: Any) -> Any:
            y = torch.relu(self.bn1(self.conv1(x)))
            y = torch.relu(self.bn2(self.conv2(y)) + self.down(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))

    net = Block()
    _randomise_bn(net, gen)
    dims = {"x": (1, 4, 16, 16)}
    return CorpusModel("resnet_block", _export_torch(net, dims), dims,
                       "torch.onnx.export (TorchScript) of a torchvision-style BasicBlock",
                       net)


def _unet_small() -> CorpusModel:
    """torch.onnx.export of a two-level UNet: Conv-ReLU encoder, MaxPool, bilinear
    (align_corners=False) Resize, Concat of skip and upsampled maps along channels,
    Conv decoder and a 1x1 output Conv."""
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(7)

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc1 = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
            self.enc2 = nn.Sequential(nn.Conv2d(6, 10, 3, padding=1), nn.ReLU())
            self.dec = nn.Sequential(nn.Conv2d(16, 6, 3, padding=1), nn.ReLU())
            self.out = nn.Conv2d(6, 2, 1)

        def forward(self, x: Any) -> Any:
            e1 = self.enc1(x)
            e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
            up = nn.functional.interpolate(e2, scale_factor=2.0, mode="bilinear",
                                           align_corners=False)
            return self.out(self.dec(torch.cat([e1, up], 1)))

    net = UNet()
    dims = {"x": (1, 3, 16, 16)}
    return CorpusModel("unet_small", _export_torch(net, dims), dims,
                       "torch.onnx.export (TorchScript) of a small UNet", net)


def _yolo_head() -> CorpusModel:
    """torch.onnx.export of a YOLO-style detection head on two scales: Conv-SiLU
    (Sigmoid * x), per-scale 1x1 detection Convs, Sigmoid, a Mul by a per-channel gain
    buffer (1, C, 1, 1) (YOLO's anchor/stride scaling), Reshape to (N, C, H*W) and a
    Concat of both scales."""
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(11)

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, 1, 1)
            self.c2 = nn.Conv2d(8, 8, 3, 2, 1)
            self.det1 = nn.Conv2d(8, 9, 1)
            self.det2 = nn.Conv2d(8, 9, 1)
            g = torch.Generator().manual_seed(12)
            self.register_buffer("gain", torch.rand(1, 9, 1, 1, generator=g) * 8 + 1)

        def forward(self, x: Any) -> Any:
            p3 = self.c1(x)
            p3 = p3 * torch.sigmoid(p3)
            p4 = self.c2(p3)
            p4 = p4 * torch.sigmoid(p4)
            y3 = torch.sigmoid(self.det1(p3)) * self.gain
            y4 = torch.sigmoid(self.det2(p4)) * self.gain
            return torch.cat([y3.flatten(2), y4.flatten(2)], 2)

    net = Head()
    dims = {"x": (1, 3, 16, 16)}
    return CorpusModel("yolo_head", _export_torch(net, dims), dims,
                       "torch.onnx.export (TorchScript) of a YOLOv5-style head", net)


def _linear_after_flatten() -> CorpusModel:
    """torch.onnx.export of Conv-ReLU, torch.flatten and two Linear layers, with a dynamic
    batch axis (the exporter writes dim_param "batch"), the classic VGG/LeNet classifier."""
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(13)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 6 * 5, 12), nn.ReLU(), nn.Linear(12, 5))
    dims = {"x": (1, 3, 6, 5)}
    return CorpusModel("linear_after_flatten",
                       _export_torch(net, dims, {"x": {0: "batch"}, "out": {0: "batch"}}),
                       dims, "torch.onnx.export (TorchScript) with dynamic_axes batch", net,
                       symbolic=["x"])


# ----------------------------------------------------------------------- helper graphs


class _Graph:
    """A tiny builder for onnx.helper graphs: seeded constants, auto node names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.n = 0

    def const(self, name: str, array: Any) -> str:
        onnx = _onnx()
        self.inits.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str, *shape: int, fan_in: int | None = None) -> str:
        """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default scale."""
        fan = fan_in or (int(np.prod(shape[1:])) if len(shape) > 1 else shape[0])
        bound = 1.0 / np.sqrt(max(fan, 1))
        return self.const(name, self.rng.uniform(-bound, bound, shape).astype(np.float32))

    def vec(self, name: str, shape: tuple[int, ...], lo: float, hi: float) -> str:
        return self.const(name, self.rng.uniform(lo, hi, shape).astype(np.float32))

    def node(self, op: str, inputs: list[str], name: str | None = None, **attrs: Any) -> str:
        onnx = _onnx()
        self.n += 1
        name = name or f"{op.lower()}_{self.n}"
        out = f"{name}_out"
        self.nodes.append(onnx.helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def model(self, inputs: dict[str, list[Any]], outputs: list[str],
              opset: int = OPSET) -> Any:
        onnx = _onnx()
        h = onnx.helper
        graph = h.make_graph(
            self.nodes, "corpus",
            [h.make_tensor_value_info(k, onnx.TensorProto.FLOAT, s) for k, s in inputs.items()],
            [h.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs],
            self.inits)
        m = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)],
                         producer_name="mpslayout-corpus")
        m.ir_version = 8
        return m


def _convtranspose_bias_add() -> CorpusModel:
    """paddle2onnx / tf2onnx style: a Conv with bias, then a stride-2 ConvTranspose WITHOUT
    a bias input followed by an ``Add`` of a (1, C, 1, 1) constant (the bias as its own
    node), then Relu; the DB head of PaddleOCR exports this way."""
    g = _Graph(21)
    y = g.node("Conv", ["x", g.weight("c1.w", 8, 3, 3, 3), g.vec("c1.b", (8,), -0.3, 0.3)],
               "conv1", pads=[1, 1, 1, 1])
    y = g.node("Relu", [y], "relu1")
    y = g.node("ConvTranspose", [y, g.weight("up.w", 8, 4, 2, 2, fan_in=16)], "up",
               strides=[2, 2])
    y = g.node("Add", [y, g.vec("up.bias", (1, 4, 1, 1), -0.5, 0.5)], "up_bias")
    y = g.node("Relu", [y], "relu2")
    dims = {"x": (1, 3, 8, 8)}
    return CorpusModel("convtranspose_bias_add", g.model({"x": list(dims["x"])}, [y]), dims,
                       "paddle2onnx/tf2onnx: ConvTranspose without bias + Add (1,C,1,1)")


def _conv_affine() -> CorpusModel:
    """tf2onnx / Keras-converter style affine pairs: Conv (no bias) -> Mul (1, C, 1, 1) ->
    Add (1, C, 1, 1) (an unfolded BatchNorm or a scale layer); a second Conv -> Div (C, 1, 1)
    -> Sub (1, C, 1, 1); and, after a Relu (not foldable), a Sub whose constant is the
    primary operand (c - x) and a Mul by a (1, C, H, W) constant (a learned positional map)."""
    g = _Graph(23)
    y = g.node("Conv", ["x", g.weight("c1.w", 8, 4, 3, 3)], "conv1", pads=[1, 1, 1, 1])
    y = g.node("Mul", [y, g.vec("bn1.scale", (1, 8, 1, 1), 0.5, 1.5)], "bn1_mul")
    y = g.node("Add", [y, g.vec("bn1.shift", (1, 8, 1, 1), -0.3, 0.3)], "bn1_add")
    y = g.node("Relu", [y], "relu1")
    y = g.node("Conv", [y, g.weight("c2.w", 8, 8, 1, 1), g.vec("c2.b", (8,), -0.2, 0.2)],
               "conv2")
    y = g.node("Div", [y, g.vec("c2.div", (8, 1, 1), 0.5, 2.0)], "c2_div")
    y = g.node("Sub", [y, g.vec("c2.sub", (1, 8, 1, 1), -0.3, 0.3)], "c2_sub")
    y = g.node("Relu", [y], "relu2")
    y = g.node("Sub", [g.vec("rev.c", (1, 8, 1, 1), 0.5, 1.0), y], "reverse_sub")
    y = g.node("Mul", [y, g.vec("pos.map", (1, 8, 6, 6), 0.5, 1.5)], "pos_mul")
    dims = {"x": (1, 4, 6, 6)}
    return CorpusModel("conv_affine", g.model({"x": list(dims["x"])}, [y]), dims,
                       "tf2onnx/Keras converters: Conv + separate Mul/Add/Div/Sub affine")


def _hardswish_decomposed() -> CorpusModel:
    """Older exporters (opset < 14) spell HardSwish as x * Clip(x + 3, 0, 6) / 6, with
    Clip's bounds as inputs (opset 11+), and HardSigmoid likewise; symbolic batch."""
    g = _Graph(29)
    y = g.node("Conv", ["x", g.weight("c1.w", 8, 3, 3, 3), g.vec("c1.b", (8,), -0.3, 0.3)],
               "conv1", pads=[1, 1, 1, 1])
    t = g.node("Add", [y, g.const("three", np.array(3.0, np.float32))], "hs_add")
    t = g.node("Clip", [t, g.const("zero", np.array(0.0, np.float32)),
                        g.const("six", np.array(6.0, np.float32))], "hs_clip")
    t = g.node("Mul", [y, t], "hs_mul")
    y = g.node("Div", [t, g.const("six_d", np.array(6.0, np.float32))], "hs_div")
    y = g.node("Conv", [y, g.weight("c2.w", 4, 8, 1, 1), g.vec("c2.b", (4,), -0.2, 0.2)],
               "conv2")
    dims = {"x": (1, 3, 8, 8)}
    return CorpusModel("hardswish_decomposed",
                       g.model({"x": ["N", 3, 8, 8]}, [y], opset=13), dims,
                       "opset-13 exporters: HardSwish as Add/Clip(min,max inputs)/Mul/Div",
                       symbolic=["x"])


def _dynamic_dims() -> CorpusModel:
    """Exporters with dynamic batch, height and width (dim_params N, H, W): a stride-2 Conv
    with auto_pad SAME_UPPER (its padding depends on the input size), depthwise Conv,
    GlobalAveragePool, Flatten, Gemm (transB=1)."""
    g = _Graph(31)
    y = g.node("Conv", ["x", g.weight("c1.w", 8, 3, 3, 3), g.vec("c1.b", (8,), -0.3, 0.3)],
               "conv1", strides=[2, 2], auto_pad="SAME_UPPER")
    y = g.node("Relu", [y], "relu1")
    y = g.node("Conv", [y, g.weight("dw.w", 8, 1, 3, 3), g.vec("dw.b", (8,), -0.2, 0.2)],
               "dw", group=8, pads=[1, 1, 1, 1])
    y = g.node("GlobalAveragePool", [y], "gap")
    y = g.node("Flatten", [y], "flat")
    y = g.node("Gemm", [y, g.weight("fc.w", 6, 8), g.vec("fc.b", (6,), -0.1, 0.1)], "fc",
               transB=1)
    dims = {"x": (1, 3, 15, 13)}
    return CorpusModel("dynamic_dims", g.model({"x": ["N", 3, "H", "W"]}, [y]), dims,
                       "dynamic_axes exports: symbolic N, H, W; SAME_UPPER stride 2",
                       symbolic=["x"])


def _layernorm_decomposed() -> CorpusModel:
    """Exporters before opset 17 (and TF converters) write LayerNorm over the last axis of
    a (N, T, C) sequence as ReduceMean, Sub, Pow, ReduceMean, Add(eps), Sqrt, Div, Mul(gamma),
    Add(beta); followed by a MatMul+Add projection on the sequence."""
    g = _Graph(37)
    c = 8
    m = g.node("ReduceMean", ["x"], "ln_mean", axes=[-1])
    d = g.node("Sub", ["x", m], "ln_sub")
    p = g.node("Pow", [d, g.const("ln.two", np.array(2.0, np.float32))], "ln_pow")
    v = g.node("ReduceMean", [p], "ln_var", axes=[-1])
    v = g.node("Add", [v, g.const("ln.eps", np.array(1e-5, np.float32))], "ln_add_eps")
    s = g.node("Sqrt", [v], "ln_sqrt")
    y = g.node("Div", [d, s], "ln_div")
    y = g.node("Mul", [y, g.vec("ln.gamma", (c,), 0.5, 1.5)], "ln_scale")
    y = g.node("Add", [y, g.vec("ln.beta", (c,), -0.3, 0.3)], "ln_shift")
    y = g.node("MatMul", [y, g.weight("proj.w", c, 6, fan_in=c)], "proj")
    y = g.node("Add", [y, g.vec("proj.b", (6,), -0.1, 0.1)], "proj_bias")
    dims = {"x": (1, 5, c)}
    return CorpusModel("layernorm_decomposed", g.model({"x": ["N", "T", c]}, [y], opset=13),
                       dims, "opset<17 exporters / tf2onnx: decomposed LayerNorm on (N,T,C)",
                       symbolic=["x"])


def _attention() -> CorpusModel:
    """A single-head self-attention block as transformer exporters write it: MatMul with
    constant (C, C) weights + Add bias for Q, K, V on a (N, T, C) sequence, Transpose of K,
    MatMul Q K^T, Mul by 1/sqrt(C), Softmax over the last axis, MatMul with V, output
    projection."""
    g = _Graph(41)
    c = 8

    def proj(tag: str, x: str) -> str:
        y = g.node("MatMul", [x, g.weight(f"{tag}.w", c, c, fan_in=c)], f"{tag}_matmul")
        return g.node("Add", [y, g.vec(f"{tag}.b", (c,), -0.1, 0.1)], f"{tag}_bias")

    q, k, v = proj("q", "x"), proj("k", "x"), proj("v", "x")
    kt = g.node("Transpose", [k], "k_t", perm=[0, 2, 1])
    s = g.node("MatMul", [q, kt], "scores")
    s = g.node("Mul", [s, g.const("attn.scale", np.array(1 / np.sqrt(c), np.float32))],
               "scale")
    a = g.node("Softmax", [s], "softmax", axis=-1)
    y = g.node("MatMul", [a, v], "context")
    y = proj("o", y)
    dims = {"x": (1, 6, c)}
    return CorpusModel("attention", g.model({"x": [1, 6, c]}, [y]), dims,
                       "transformer exporters: attention with MatMul on (N,T,C)")


def _flatten_matmul_symbolic() -> CorpusModel:
    """A Linear after a flatten as tf2onnx / older torch emit it: Flatten + MatMul with an
    (C*H*W, O) constant + Add bias, with the graph's input dims symbolic (N, H, W), so the
    (C, H, W) the MatMul reads is only known once the input size is fixed."""
    g = _Graph(43)
    y = g.node("Conv", ["x", g.weight("c1.w", 4, 2, 3, 3), g.vec("c1.b", (4,), -0.2, 0.2)],
               "conv1", pads=[1, 1, 1, 1])
    y = g.node("Relu", [y], "relu1")
    y = g.node("Flatten", [y], "flat")
    y = g.node("MatMul", [y, g.weight("fc.w", 4 * 5 * 3, 7)], "fc")
    y = g.node("Add", [y, g.vec("fc.b", (7,), -0.1, 0.1)], "fc_bias")
    dims = {"x": (1, 2, 5, 3)}
    return CorpusModel("flatten_matmul_symbolic",
                       g.model({"x": ["N", 2, "H", "W"]}, [y]), dims,
                       "tf2onnx/older torch: Flatten + MatMul + Add with symbolic dims",
                       symbolic=["x"])


def _broadcast_add() -> CorpusModel:
    """A broadcasting Add of a (1, C, 1, 1) map and a (1, C, H, W) map, both computed
    (squeeze-excitation / global-context style): no constant, MPS's broadcast strides."""
    g = _Graph(47)
    a = g.node("Conv", ["x", g.weight("c1.w", 6, 3, 3, 3), g.vec("c1.b", (6,), -0.3, 0.3)],
               "conv1", pads=[1, 1, 1, 1])
    p = g.node("GlobalAveragePool", [a], "gap")
    p = g.node("Conv", [p, g.weight("ctx.w", 6, 6, 1, 1), g.vec("ctx.b", (6,), -0.2, 0.2)],
               "ctx")
    p = g.node("Sigmoid", [p], "ctx_sig")
    y = g.node("Add", [a, p], "add_context")
    dims = {"x": (1, 3, 6, 6)}
    return CorpusModel("broadcast_add", g.model({"x": list(dims["x"])}, [y]), dims,
                       "global-context blocks: Add of (1,C,1,1) and (1,C,H,W) maps")


def _norms() -> CorpusModel:
    """Learned tensors of operators MPSCNN has no single kernel for, as torch and paddle
    export them: InstanceNormalization (scale, B), PRelu with a (C, 1, 1) slope, then the
    map as a (N, H*W, C) sequence (Reshape + Transpose) and LayerNormalization (opset 17)
    with scale and bias, and an Embedding-style Gather from a constant table."""
    g = _Graph(53)
    c = 4
    y = g.node("Conv", ["x", g.weight("c1.w", c, 3, 3, 3), g.vec("c1.b", (c,), -0.3, 0.3)],
               "conv1", pads=[1, 1, 1, 1])
    y = g.node("InstanceNormalization", [y, g.vec("in.scale", (c,), 0.5, 1.5),
                                         g.vec("in.bias", (c,), -0.3, 0.3)], "inorm")
    y = g.node("PRelu", [y, g.vec("prelu.slope", (c, 1, 1), 0.05, 0.3)], "prelu")
    y = g.node("Reshape", [y, g.const("seq.shape", np.array([1, c, -1], np.int64))], "to_seq")
    y = g.node("Transpose", [y], "seq_t", perm=[0, 2, 1])
    y = g.node("LayerNormalization", [y, g.vec("ln.weight", (c,), 0.5, 1.5),
                                      g.vec("ln.bias", (c,), -0.3, 0.3)], "layernorm",
               axis=-1)
    e = g.node("Gather", [g.vec("pos.embed", (16, c), -1.0, 1.0), "pos"], "pos_embed")
    y = g.node("Add", [y, e], "add_pos")
    onnx = _onnx()
    m = g.model({"x": [1, 3, 4, 4]}, [y])
    m.graph.input.append(onnx.helper.make_tensor_value_info("pos", onnx.TensorProto.INT64,
                                                            [1, 16]))
    dims = {"x": (1, 3, 4, 4), "pos": (1, 16)}
    return CorpusModel("norms", m, dims,
                       "torch/paddle exports: InstanceNorm, PRelu, LayerNormalization, "
                       "embedding Gather")


def _lstm() -> CorpusModel:
    """A CRNN-style recognizer tail: a (T, N, C) sequence through a bidirectional LSTM
    (W, R, B initializers, as torch exports nn.LSTM), then a MatMul + Add classifier on
    the (T, N, 2H) output."""
    g = _Graph(59)
    c, h = 6, 5
    onnx = _onnx()
    y = "lstm_y"
    g.nodes.append(onnx.helper.make_node(
        "LSTM", ["x", g.weight("lstm.W", 2, 4 * h, c, fan_in=h),
                 g.weight("lstm.R", 2, 4 * h, h, fan_in=h),
                 g.vec("lstm.B", (2, 8 * h), -0.2, 0.2)],
        [y], name="lstm", hidden_size=h, direction="bidirectional"))
    y = g.node("Transpose", [y], "lstm_t", perm=[0, 2, 1, 3])
    y = g.node("Reshape", [y, g.const("seq.shape", np.array([0, 0, -1], np.int64))],
               "lstm_merge")
    y = g.node("MatMul", [y, g.weight("cls.w", 2 * h, 7, fan_in=2 * h)], "cls")
    y = g.node("Add", [y, g.vec("cls.b", (7,), -0.1, 0.1)], "cls_bias")
    dims = {"x": (4, 1, c)}
    return CorpusModel("lstm", g.model({"x": [4, 1, c]}, [y]), dims,
                       "torch nn.LSTM export (bidirectional) + classifier, CRNN tail")


BUILDERS: dict[str, Callable[[], CorpusModel]] = {
    "mobilenetv3_db": _mobilenetv3_db,
    "resnet_block": _resnet_block,
    "unet_small": _unet_small,
    "yolo_head": _yolo_head,
    "linear_after_flatten": _linear_after_flatten,
    "convtranspose_bias_add": _convtranspose_bias_add,
    "conv_affine": _conv_affine,
    "hardswish_decomposed": _hardswish_decomposed,
    "dynamic_dims": _dynamic_dims,
    "layernorm_decomposed": _layernorm_decomposed,
    "attention": _attention,
    "flatten_matmul_symbolic": _flatten_matmul_symbolic,
    "broadcast_add": _broadcast_add,
    "norms": _norms,
    "lstm": _lstm,
}
NAMES = tuple(BUILDERS)
TORCH_NAMES = ("mobilenetv3_db", "resnet_block", "unet_small", "yolo_head",
               "linear_after_flatten")


@functools.cache
def _cached(name: str) -> CorpusModel:
    return BUILDERS[name]()


def build(name: str) -> CorpusModel:
    """A fresh copy of corpus model ``name`` (ModelProto copied; torch module shared)."""
    if name not in BUILDERS:
        raise ValueError(f"no corpus model {name!r}; the corpus has {', '.join(NAMES)}")
    onnx = _onnx()
    cm = _cached(name)
    model = onnx.ModelProto()
    model.CopyFrom(cm.model)
    return CorpusModel(cm.name, model, dict(cm.input_dims), cm.mimics, cm.torch_module,
                       list(cm.symbolic))


def feeds(cm: CorpusModel, seed: int = 0) -> dict[str, np.ndarray]:
    """A seeded input per graph input at ``cm.input_dims``: standard normal floats, and
    indices 0..n-1 for integer inputs (the ``norms`` model's positions)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, dims in cm.input_dims.items():
        if name == "pos":
            out[name] = np.arange(int(np.prod(dims)), dtype=np.int64).reshape(dims) % 16
        else:
            out[name] = rng.standard_normal(dims).astype(np.float32)
    return out


def save(cm: CorpusModel, folder: Any) -> Any:
    """Write ``cm.model`` to ``folder/NAME.onnx`` (creating ``folder``); returns the path."""
    import pathlib

    onnx = _onnx()
    pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
    path = pathlib.Path(folder) / f"{cm.name}.onnx"
    onnx.save(cm.model, str(path))
    return path


# ----------------------------------------------------------------------- the count

# operand positions that are not data: shapes, axes, indices, Resize's roi/scales/sizes,
# Clip's bounds, Pad's pads/value, Pow's exponent (a hyper-parameter of the operator, like
# Clip's bounds), slice starts/ends/steps, Gather/ScatterElements indices
NOT_DATA: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Resize": (1, 2, 3), "Upsample": (1,), "Clip": (1, 2),
    "Pad": (1, 2, 3), "Pow": (1,), "Slice": (1, 2, 3, 4), "Expand": (1,), "Tile": (1,),
    "Unsqueeze": (1,), "Squeeze": (1,), "Split": (1,), "ReduceMean": (1,),
    "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "ReduceL2": (1,), "TopK": (1,), "Gather": (1,), "GatherElements": (1,),
    "ConstantOfShape": (0,), "Range": (0, 1, 2), "OneHot": (1, 2), "CumSum": (1,),
    "Where": (0,), "LSTM": (4, 5, 6), "GRU": (4, 5), "RNN": (4, 5),
}


def learned_tensors(model: Any) -> dict[str, list[tuple[str, str]]]:
    """Every floating-point constant (initializer or Constant node output, through Identity)
    that some node reads at a data operand: ``{tensor: [(node name, op), ...]}``. Written
    from the ONNX operator definitions, independently of mpslayout's reader; this is what
    a count of "nothing learned left behind" counts."""
    g = model.graph
    float_types = {1, 10, 11, 16}
    consts = {t.name for t in g.initializer if t.data_type in float_types}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in float_types:
                    consts.add(node.output[0])
    alias = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity"}
    readers: dict[str, list[tuple[Any, int]]] = {}
    for node in g.node:
        for pos, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, pos))
    outputs = {o.name for o in g.output}

    def parameter_only(node: Any, depth: int = 0) -> bool:
        # shape arithmetic (Concat of constants -> Resize scales) whose every reader
        # takes it at a position that is not data
        if node.op_type not in ("Concat", "Cast", "Mul", "Div", "Add", "Sub") or depth > 8:
            return False
        for o in node.output:
            if o in outputs or not readers.get(o):
                return False
            for reader, pos in readers[o]:
                if pos not in NOT_DATA.get(reader.op_type, ()) and not parameter_only(
                        reader, depth + 1):
                    return False
        return True

    out: dict[str, list[tuple[str, str]]] = {}
    for i, node in enumerate(g.node):
        if node.op_type in ("Identity", "Constant") or parameter_only(node):
            continue
        skip = NOT_DATA.get(node.op_type, ())
        for pos, name in enumerate(node.input):
            while name in alias:
                name = alias[name]
            if name and name in consts and pos not in skip:
                out.setdefault(name, []).append((node.name or f"{node.op_type}_{i}",
                                                 node.op_type))
    return out
