"""``mpslayout verify OUTDIR --model MODEL.onnx``: the ONNX model is the graph and ONNX
Runtime the oracle. Also where the input comes from: ``--input``, else the dims the export
recorded, else the model's own fixed dims; a symbolic spatial dim is refused, never
guessed (a 1x1 input would leave every tap of a 3x3 kernel but the centre untested)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np

from .core import verify_graph
from .expect import Expected, check_expected, load_expected
from .files import VerifyError, load_export
from .graph import Graph, onnx_module
from .integer_ops import float_equivalent
from .opset import refuse, runnable
from .ort import onnx_runtime_oracle, onnxruntime_module
from .report import Report

__all__ = ["input_feeds", "verify"]


def input_feeds(g: Graph, given: Mapping[str | None, np.ndarray], recorded: Mapping[str, Any],
                dims: Mapping[str, Sequence[int]], seed: int) -> tuple[dict[str, np.ndarray], str]:
    """The model's inputs and how they were chosen: ``given`` ({name: array}, or {None:
    array} for a model's only input: --input), else ``dims`` (--input-dims), else the dims
    the export recorded, else the model's fixed dims, with a seeded standard normal
    sample; refuses any symbolic dim but the batch, and inputs that are not float."""
    inputs = g.inputs
    if not inputs:
        raise VerifyError("the model has no input")
    names = [vi.name for vi in inputs]
    if None in given:
        if len(inputs) != 1:
            raise VerifyError(f"--input FILE.npy gives one array but the model has inputs "
                              f"{names}: pass --input NAME=FILE.npy for each")
        given = {names[0]: given[None]}
    unknown = [k for k in given if k not in names]
    if unknown:
        raise VerifyError(f"--input names {unknown}; the model's inputs are {names}")
    rng = np.random.default_rng(seed)
    feeds, how = {}, []
    for vi in inputs:
        tt = vi.type.tensor_type
        model_dims: list[int | None] = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in tt.shape.dim]
        if vi.name in given:
            a = np.asarray(given[vi.name])
            if a.dtype.kind == "f":
                a = a.astype(np.float32)
            if a.ndim != len(model_dims) or any(d is not None and d != s
                                                for d, s in zip(model_dims, a.shape)):
                raise VerifyError(f"--input has shape {list(a.shape)}, the model's "
                                  f"{vi.name!r} is {[d or '?' for d in model_dims]}")
            feeds[vi.name] = np.ascontiguousarray(a)
            continue
        if tt.elem_type != 1:
            raise VerifyError(f"model input {vi.name!r} is not float32: pass its values with "
                              f"--input {vi.name}=FILE.npy")
        shape, source = list(model_dims), "the model"
        for label, table in (("--input-dims", dims), ("the export's recorded dims", recorded)):
            want = table.get(vi.name)
            if want is None:
                continue
            want = list(want)
            if len(want) != len(shape):
                raise VerifyError(f"{label} give {vi.name!r} {len(want)} dims; the model has "
                                  f"{len(shape)}")
            clash = [k for k, (w, d) in enumerate(zip(want, shape))
                     if w is not None and d is not None and int(w) != d]
            if clash and table is dims:
                raise VerifyError(f"--input-dims {vi.name}={want} but the model fixes "
                                  f"{[d or '?' for d in shape]}")
            if clash:  # recorded for another model: the model's own dims win
                how.append(f"{vi.name}: the export recorded {want}, the model fixes "
                           f"{[d or '?' for d in shape]}")
            shape = [d if d is not None else (None if w is None else int(w))
                     for w, d in zip(want, shape)]
            source = label
            break
        if len(shape) > 0 and shape[0] is None:
            shape[0] = 1
            how.append(f"{vi.name}: symbolic batch, 1 image")
        unknown = [k for k, d in enumerate(shape) if d is None]
        if unknown:
            raise VerifyError(
                f"model input {vi.name!r} has symbolic dims {unknown} "
                f"({[d or '?' for d in shape]}) and the export recorded none: verify will "
                "not guess them (a 1x1 image leaves every tap of a 3x3 kernel but the centre "
                f"untested). Pass --input x.npy, or --input-dims {_dims_hint(vi.name, tt)} "
                "(also accepted by mpslayout export, which then records them)")
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
        how.append(f"{vi.name}: dims from {source}")
    return feeds, "; ".join(how)


def _dims_hint(name: str, tt: Any) -> str:
    """NAME=D0,D1,... in the model's own rank: its fixed dims as they are, a symbolic batch
    1, the others by their name in the model (H, W for an image's unnamed ones)."""
    dims = list(tt.shape.dim)
    out = []
    for k, d in enumerate(dims):
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(str(d.dim_value))
        elif k == 0:
            out.append("1")
        elif d.dim_param and d.dim_param.isidentifier() and len(d.dim_param) <= 12:
            out.append(d.dim_param)
        else:
            out.append({2: "H", 3: "W"}.get(k, f"D{k}") if len(dims) == 4 else f"D{k}")
    return f"{name}=" + ",".join(out)


Given = Union[np.ndarray, str, "os.PathLike[str]"]  # Union: `|` fails at run time on 3.9


def verify(outdir: str | os.PathLike[str], model: str | os.PathLike[str], *,
           input: Given | Mapping[str, Given] | None = None,
           input_dims: Mapping[str, Sequence[int]] | None = None,
           atol: float = 1e-4, rtol: float = 1e-4, storage: str | None = None,
           seed: int = 0, allow_inexact: bool = False,
           expect: Expected | Mapping[str | None, Expected] | None = None,
           progress: Any = None) -> Report:
    """Check the export in ``outdir`` against the ONNX ``model`` with ONNX Runtime as the
    oracle (see :mod:`mpslayout.verify`).

    ``input``: an array or a .npy path for the model's only input, or {input name: array
    or .npy path}; for other inputs ``input_dims``
    ({input name: dims}) or the dims recorded at export, with a seeded standard normal
    sample (``seed``). ``storage``: the MPS image type, "float16" or "float32" (default:
    the manifest's weight type). ``allow_inexact``: a layer the manifest declares MPS
    cannot compute (a GRU with ``linear_before_reset=1``) passes when its files, run with
    the model's own cell, agree. ``expect``: the model's known outputs (an array or a
    .npy / .pb path for its only output, or {output name: array or path}): ONNX Runtime's
    outputs are also compared with them, and where no ONNX Runtime runs the model (even
    upgraded, :mod:`.opset`) they are the judge. ``progress``: a callable given each line
    of progress (None: silent). Raises :class:`VerifyError` when nothing can be compared
    (a corrupt export, an unreadable model, no usable input, no judge); divergences are
    in the report.
    """
    onnx = onnx_module()
    onnxruntime_module()
    loaded = load_export(outdir)
    doc = loaded[0]
    mpath = os.fspath(model)
    try:
        proto = onnx.load(mpath)
    except FileNotFoundError:
        raise VerifyError(f"model file not found: {mpath}") from None
    except Exception as e:
        raise VerifyError(f"cannot read {mpath} as ONNX: {type(e).__name__}: {e}") from None
    # ConvInteger/MatMulInteger chains: judged as the float model with weights dequantized
    proto, integer_nodes = float_equivalent(proto)
    table: dict[str | None, Given] = (dict(input) if isinstance(input, Mapping) else
                                      {} if input is None else {None: input})
    given: dict[str | None, np.ndarray] = {}
    for k, v in table.items():
        if isinstance(v, (str, os.PathLike)):
            try:
                given[k] = np.load(os.fspath(v), allow_pickle=False)
            except (OSError, ValueError) as e:
                raise VerifyError(f"cannot read --input {os.fspath(v)}: {e}") from None
        else:
            given[k] = np.asarray(v)
    paths = [os.fspath(v) for v in table.values() if isinstance(v, (str, os.PathLike))]
    what = (", ".join(paths) if paths else "the arrays given" if table else
            f"seeded standard normal (seed {seed})")
    recorded = doc.get("inputs") if isinstance(doc.get("inputs"), dict) else {}
    feeds, how = input_feeds(Graph(proto), given, recorded, input_dims or {}, seed)
    what += "; shape " + ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
    if how:
        what += f" ({how})"
    if integer_nodes:
        what += (f"; {', '.join(integer_nodes)} run as float operators on dequantized "
                 "weights (not quantizing activations), as the exported layers do")
    outputs = [o.name for o in proto.graph.output]
    expected = load_expected(expect, outputs)
    proto, upgraded, why = runnable(proto)
    if why is not None and not expected:
        raise refuse(why)
    seen: dict[str, np.ndarray] = {}
    fallback: list[str] = []
    if why is None:
        run = onnx_runtime_oracle(proto)

        def oracle(names: Sequence[str]) -> Mapping[str, np.ndarray]:
            try:
                got = run(names, feeds)
            except VerifyError as e:  # loads, but fails on this input
                if not expected:
                    raise refuse(str(e)) from None
                fallback.append(f"{e}: only the model's outputs are compared, with the "
                                "expected values given (--expect); the layers before them "
                                "run chained from the input")
                return dict(expected)
            seen.update(got)
            return got

        label = "ONNX Runtime"
    else:  # only the expected outputs judge
        def oracle(names: Sequence[str]) -> Mapping[str, np.ndarray]:
            return dict(expected)

        label = "the expected outputs (--expect)"
    report = verify_graph(outdir, proto, feeds, oracle, model_label=mpath,
                          oracle_label=label, input_label=what, atol=atol, rtol=rtol,
                          storage=storage, loaded=loaded, progress=progress)
    if upgraded:
        report.model_notes.append(upgraded)
    if fallback:
        report.model_notes.extend(fallback)
        report.oracle = "the expected outputs (--expect)"
    if why is not None:
        report.model_notes.append(f"{why}: only the model's outputs are compared, with the "
                                  "expected values given (--expect); the layers before them "
                                  "run chained from the input")
    elif expected and not fallback:
        check_expected(report, expected, seen, "ONNX Runtime")
    report.allow_inexact = bool(allow_inexact)
    return report
