"""Writes examples/generator.onnx: a small seeded generator with the shape of the seed problem
(docs/layouts.md section 6, Dense followed by Reshape), built with onnx.helper alone (no
PyTorch needed).

    x (1, 3, 8, 8)
    conv1    Conv 3->8, 3x3, stride 2, pad 1, ReLU                    (1, 8, 4, 4)
    flatten  torch.flatten order C, H, W                              (1, 128)
    fc1      Gemm transB=1 (a PyTorch Linear), ReLU                   (1, 64)
    fc2      Gemm transB=0 (a Keras-style Dense)                      (1, 256)
    reshape  view(-1, 16, 4, 4): PyTorch order C, H, W                (1, 16, 4, 4)
    up       ConvTranspose 16->8, 4x4, stride 2, pad 1, ReLU           (1, 8, 8, 8)
    dw       depthwise Conv 8 channels, 3x3, pad 1, BatchNorm, ReLU   (1, 8, 8, 8)
    pw       Conv 8->4, 1x1 (pointwise): the "image" output           (1, 4, 8, 8)
    head     Flatten, then Gemm transB=1 (a Linear after a flatten)   (1, 1): the "score"

Run: python examples/make_generator.py  (then: mpslayout export examples/generator.onnx -o out)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OPSET = 17


def build(seed: int = 2026) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def param(name: str, *shape: int, scale: float = 0.2) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale)
                                       .astype(np.float32), name)

    inits = [
        param("conv1.weight", 8, 3, 3, 3), param("conv1.bias", 8),
        param("fc1.weight", 64, 128, scale=0.1), param("fc1.bias", 64),
        param("fc2.weight", 64, 256, scale=0.1), param("fc2.bias", 256),
        param("up.weight", 16, 8, 4, 4), param("up.bias", 8),
        param("dw.weight", 8, 1, 3, 3), param("dw.bias", 8),
        param("bn.scale", 8), param("bn.bias", 8), param("bn.mean", 8),
        numpy_helper.from_array((rng.random(8) + 0.5).astype(np.float32), "bn.var"),
        param("pw.weight", 4, 8, 1, 1), param("pw.bias", 4),
        param("head.weight", 1, 256, scale=0.05), param("head.bias", 1),
        numpy_helper.from_array(np.array([-1, 16, 4, 4], np.int64), "reshape.shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1",
                         kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["c1r"], name="relu1"),
        helper.make_node("Flatten", ["c1r"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["f1"], name="fc1",
                         transB=1),
        helper.make_node("Relu", ["f1"], ["f1r"], name="relu2"),
        helper.make_node("Gemm", ["f1r", "fc2.weight", "fc2.bias"], ["f2"], name="fc2"),
        helper.make_node("Reshape", ["f2", "reshape.shape"], ["seed"], name="reshape"),
        helper.make_node("ConvTranspose", ["seed", "up.weight", "up.bias"], ["u"], name="up",
                         kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["u"], ["ur"], name="relu3"),
        helper.make_node("Conv", ["ur", "dw.weight", "dw.bias"], ["d"], name="dw",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8),
        helper.make_node("BatchNormalization", ["d", "bn.scale", "bn.bias", "bn.mean",
                                                "bn.var"], ["dn"], name="bn", epsilon=1e-3),
        helper.make_node("Relu", ["dn"], ["dr"], name="relu4"),
        helper.make_node("Conv", ["dr", "pw.weight", "pw.bias"], ["image"], name="pw",
                         kernel_shape=[1, 1]),
        helper.make_node("Flatten", ["image"], ["image_flat"], name="head_flatten", axis=1),
        helper.make_node("Gemm", ["image_flat", "head.weight", "head.bias"], ["score"],
                         name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "generator",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4, 8, 8]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="mpslayout examples/make_generator.py")
    model.ir_version = 8  # readable by every onnxruntime since 1.11
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    onnx.save(build(), str(HERE / "generator.onnx"))


if __name__ == "__main__":
    main()
