"""A model ONNX Runtime will not run as it is (an opset-6 BatchNormalization or PRelu with
``consumed_inputs``, which today's ONNX Runtime has no kernel for): verify runs a copy
upgraded with ``onnx.version_converter`` and says so; where even that fails, the expected
outputs the user gives (``--expect``, :mod:`.expect`) are the only judge."""

from __future__ import annotations

from typing import Any

from .files import Uncheckable
from .graph import onnx_module
from .ort import onnxruntime_module

__all__ = ["TARGET_OPSET", "refuse", "runnable"]

TARGET_OPSET = 13  # an opset every ONNX Runtime since 1.8 runs, and the converter reaches


def _session_problem(model: Any) -> str | None:
    """Why ONNX Runtime refuses to load ``model``, or None when it loads it."""
    ort = onnxruntime_module()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(model.SerializeToString(), opts,
                             providers=["CPUExecutionProvider"])
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def _opset(model: Any) -> int | None:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")),
                None)


def runnable(model: Any) -> tuple[Any, str | None, str | None]:
    """(the model ONNX Runtime runs, a note saying what was done to it or None, and when
    no runnable model exists, why). The upgraded copy keeps every node's name: an
    unnamed node is first given the name the export gives it (``{op}_{index}``), so the
    manifest's ``source.node`` still finds it."""
    problem = _session_problem(model)
    if problem is None:
        return model, None, None
    onnx = onnx_module()
    old = _opset(model)
    if old is None or old >= TARGET_OPSET:
        return model, None, f"ONNX Runtime cannot run the model: {problem}"
    named = onnx.ModelProto()
    named.CopyFrom(model)
    for i, n in enumerate(named.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    try:
        from onnx import version_converter

        up = version_converter.convert_version(named, TARGET_OPSET)
    except Exception as e:
        return model, None, (f"ONNX Runtime cannot run the model (opset {old}): {problem}; "
                             f"onnx.version_converter cannot upgrade it to opset "
                             f"{TARGET_OPSET}: {type(e).__name__}: {e}")
    for i, n in enumerate(up.graph.node):
        if not n.name:  # a node the converter added
            n.name = f"opset_upgrade_{n.op_type}_{i}"
    fixed = _channel_slopes(up) if old < 7 else []
    still = _session_problem(up)
    if still is not None:
        return model, None, (f"ONNX Runtime cannot run the model (opset {old}): {problem}; "
                             f"nor its copy upgraded to opset {TARGET_OPSET} by "
                             f"onnx.version_converter: {still}")
    note = (f"the model is opset {old}, which ONNX Runtime does not run "
            f"({problem.splitlines()[0][:160]}): verified against a copy upgraded to opset "
            f"{TARGET_OPSET} by onnx.version_converter")
    if fixed:
        note += (f" (PRelu slopes {fixed} given their opset-{old} meaning, one per channel, "
                 "as [C, 1, ...] for numpy broadcasting)")
    return up, note, None


def _channel_slopes(model: Any) -> list[str]:
    """Opset 6 PRelu reads a slope [C] per channel (axis 1); from opset 7 on, [C] broadcasts
    along the last axis, and the converter leaves it as it is. Each such slope initializer
    becomes [C, 1, ..., 1] for its input's rank (its graph input too, in an IR 3 model that
    lists initializers as inputs). Returns the tensors changed."""
    onnx = onnx_module()
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return []
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim)
             for vi in [*inferred.graph.input, *inferred.graph.value_info]
             if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")}
    inits = {t.name: t for t in model.graph.initializer}
    done = []
    for n in model.graph.node:
        if n.op_type != "PRelu" or len(n.input) < 2 or n.input[1] not in inits:
            continue
        t, rank = inits[n.input[1]], ranks.get(n.input[0], 0)
        if len(t.dims) != 1 or t.dims[0] < 2 or rank < 3 or n.input[1] in done:
            continue
        dims = [int(t.dims[0])] + [1] * (rank - 2)
        del t.dims[:]
        t.dims.extend(dims)
        for vi in model.graph.input:
            if vi.name == t.name and vi.type.HasField("tensor_type"):
                shape = vi.type.tensor_type.shape
                del shape.dim[:]
                for d in dims:
                    shape.dim.add().dim_value = d
        done.append(n.input[1])
    return done


def refuse(why: str) -> Uncheckable:
    """The error when nothing can judge the model: what failed, and what would help."""
    return Uncheckable(f"{why}. Pass the model's known outputs with --expect NAME=FILE.npy "
                       "(or .pb) to compare the export with them instead")
