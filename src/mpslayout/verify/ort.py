"""ONNX Runtime as verify's oracle: runs a model with every graph optimisation off and
returns each tensor asked for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .files import VerifyError
from .graph import Graph, onnx_module

__all__ = ["onnx_runtime_oracle", "onnxruntime_module"]


def onnxruntime_module() -> Any:
    """The onnxruntime module, or a VerifyError saying which extra installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise VerifyError("verify needs onnx and onnxruntime: pip install "
                          "mpslayout[oracles]") from None
    return onnxruntime


def onnx_runtime_oracle(model: Any) -> Any:
    """An oracle that runs ``model`` (an onnx.ModelProto) in ONNX Runtime, every graph
    optimisation off, and returns each requested tensor it can."""
    onnx = onnx_module()
    ort = onnxruntime_module()

    def oracle(names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        g = Graph(model, {k: tuple(v.shape) for k, v in feeds.items()})
        m = onnx.ModelProto()
        m.CopyFrom(model)
        have = {o.name for o in m.graph.output}
        for name in names:
            if name not in have and name in g.types:
                m.graph.output.append(onnx.helper.make_tensor_value_info(
                    name, g.types[name], None))
                have.add(name)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        fetch = [o.name for o in m.graph.output]
        try:
            sess = ort.InferenceSession(m.SerializeToString(), opts,
                                        providers=["CPUExecutionProvider"])
            got = sess.run(fetch, dict(feeds))
        except Exception as e:
            raise VerifyError(f"ONNX Runtime cannot run the model: {type(e).__name__}: "
                              f"{e}") from None
        return dict(zip(fetch, got))

    return oracle
