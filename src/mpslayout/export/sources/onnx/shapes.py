"""The shapes of an ONNX graph's tensors, with the graph inputs' dims fixed by
``input_dims``: ONNX shape inference, then rounds of constant propagation
(:mod:`.const_eval`) that write what the shape subgraphs compute (``Shape -> Gather ->
Unsqueeze -> Concat -> Reshape`` of Paddle and dynamic PyTorch exports) into a copy of the
model as constants, so that inference resolves what follows; and, where the inputs' dims are
all known and ONNX Runtime is installed, one run on zero inputs to read the shapes neither
can prove (said in the plan's assumptions)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .tensors import _EXTERNAL, _onnx

__all__ = ["infer"]

_ROUNDS = 6          # constant propagation rounds (each resolves one more Shape level)
_FOLD_MAX = 4096     # largest computed value written into the copy (elements)
# ops whose operand shapes decide a layer's geometry: what a run is asked for
_NEEDED = frozenset(("Flatten", "Reshape", "Gemm", "MatMul", "Conv", "ConvTranspose",
                     "Transpose", "Squeeze", "Unsqueeze"))


def _run_inference(onnx: Any, model: Any, plan: Any, first: bool) -> Any:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as strict_error:  # inference is a help, not a requirement
        try:
            out = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
            if first:
                plan.assumptions.append(f"strict ONNX shape inference failed ({strict_error}); "
                                        "shapes come from the permissive mode")
            return out
        except Exception as e:
            if first:
                plan.assumptions.append(f"ONNX shape inference failed ({e}); layers that "
                                        "need shapes were skipped")
            return model


def _record(g: Any, inferred: Any) -> None:
    gr = inferred.graph
    for vi in [*gr.input, *gr.value_info, *gr.output]:
        tt = vi.type.tensor_type
        if tt.elem_type:
            g.dtypes[vi.name] = tt.elem_type
        if tt.HasField("shape"):
            g.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                                 else None for d in tt.shape.dim]
    for t in g.model.graph.initializer:
        g.shapes[t.name] = list(t.dims)


def _unknown(g: Any, name: str) -> bool:
    s = g.shapes.get(name)
    return s is None or None in s


def _fold_round(g: Any, onnx: Any, model: Any, folded: set[str]) -> int:
    """Write into ``model`` (the copy) every small tensor the evaluator now computes that
    inference does not yet know as a value; returns how many."""
    from .const_eval import OPS

    g.ev.reset()
    new: dict[str, np.ndarray] = {}
    for node in g.nodes:
        if node.op_type not in OPS or node.op_type == "Constant" or \
                node.domain not in ("", "ai.onnx"):
            continue
        outs = [o for o in node.output if o]
        if not outs or any(o in folded for o in outs):
            continue
        known = [g.shapes.get(o) for o in outs]
        if any(s is not None and None not in s and math.prod(s) > _FOLD_MAX  # type: ignore
               for s in known):
            continue  # a weight, not a shape: not computed again each round
        vals = [g.ev.get(o) for o in outs]
        if any(v is None or v.value.size > _FOLD_MAX for v in vals):
            continue
        for o, v in zip(outs, vals):
            new[o] = np.ascontiguousarray(v.value)  # type: ignore[union-attr]
    if not new:
        return 0
    kept = [n for n in model.graph.node if not all(o in new for o in n.output if o)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    for name, v in new.items():
        model.graph.initializer.append(onnx.numpy_helper.from_array(v, name))
    folded.update(new)
    return len(new)


def infer(g: Any) -> None:
    """Fill ``g.shapes`` (module docstring); records the inputs' dims in ``g.plan.inputs``."""
    onnx = _onnx()
    model = onnx.ModelProto()
    model.CopyFrom(g.model)
    g.fix_input_dims(model, g.over.input_dims)
    # shape constants (Reshape targets) stored externally: inline them in the copy, since
    # inference does not read external data
    for t in model.graph.initializer:
        ref = g.refs[t.name]
        if t.data_location == _EXTERNAL and ref.dtype.kind in "iu" and ref.nbytes <= 4096:
            t.CopyFrom(onnx.numpy_helper.from_array(np.array(ref.load()), t.name))
    _record(g, _run_inference(onnx, model, g.plan, True))
    folded: set[str] = set()
    for _ in range(_ROUNDS):
        before = {k: list(v) for k, v in g.shapes.items()}
        if not _fold_round(g, onnx, model, folded):
            break
        _record(g, _run_inference(onnx, model, g.plan, False))
        if g.shapes == before:
            break
    g.ev.reset()
    for name in g.graph_inputs():
        g.plan.inputs[name] = g.shapes.get(name)
    _run_once(g, onnx)


def _run_once(g: Any, onnx: Any) -> None:
    """Where the inputs' dims were given and ONNX Runtime is installed: the shapes of the
    tensors around flattens, reshapes and weight layers that are still unknown, read from
    one run on zero inputs."""
    if not g.over.input_dims:
        return
    inputs = g.graph_inputs()
    if any(_unknown(g, n) for n in inputs):
        return
    want = sorted({t for node in g.nodes if node.op_type in _NEEDED
                   for t in (*node.input[:1], *node.output[:1]) if t and _unknown(g, t)
                   and t not in g.protos})
    if not want:
        return
    if any(t.data_location == _EXTERNAL for t in g.model.graph.initializer):
        g.plan.assumptions.append(
            f"the shapes of {len(want)} tensor(s) are not known ({', '.join(want[:5])}); "
            "a run of ONNX Runtime could tell but the model keeps external data")
        return
    try:
        import onnxruntime as ort
    except ImportError:
        g.plan.assumptions.append(
            f"the shapes of {len(want)} tensor(s) are not known from constant propagation "
            f"({', '.join(want[:5])}); installing onnxruntime lets export read them from "
            "one run")
        return
    model = onnx.ModelProto()
    model.CopyFrom(g.model)
    g.fix_input_dims(model, g.over.input_dims)
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in want
                              if t not in g.graph_outputs)
    feeds = {}
    for name, vi in inputs.items():
        code = vi.type.tensor_type.elem_type
        dt = onnx.helper.tensor_dtype_to_np_dtype(code) if code else np.float32
        feeds[name] = np.zeros(g.shapes[name], dt)
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        outs = sess.run(None, feeds)
    except Exception as e:  # a help, not a requirement
        g.plan.assumptions.append(f"ONNX Runtime could not run the model to read the shapes "
                                  f"of {len(want)} tensor(s) ({type(e).__name__}: "
                                  f"{str(e)[:200]})")
        return
    got = 0
    for name, value in zip(names, outs):
        if name in want and hasattr(value, "shape"):
            g.shapes[name] = [int(d) for d in value.shape]
            got += 1
    if got:
        g.plan.assumptions.append(
            f"the shapes of {got} tensor(s) constant propagation could not prove "
            f"({', '.join(want[:5])}{', ...' if len(want) > 5 else ''}) were read from one "
            "ONNX Runtime run on zero inputs of the given --input-dims")
