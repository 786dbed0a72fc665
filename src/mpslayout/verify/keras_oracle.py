"""``mpslayout verify OUTDIR --model MODEL.keras|MODEL.h5``: Keras itself is the judge.

The Keras model is loaded with Keras (any backend), translated to an equivalent NCHW ONNX
graph (:func:`mpslayout.keras_onnx.keras_as_onnx`) that gives verify the graph to walk,
and run once by Keras on the input with every layer's output kept: those values,
transposed to NCHW, are the oracle's answers. A fused activation's input is not a Keras
tensor, so it is not compared (the layer is compared after its activation). The input is
in the model's own NHWC layout: ``input`` (an array or a .npy file), else ``input_dims``
(``{input name: NHWC dims}``) or the dims the export recorded (manifest ``inputs``) for a
seeded random input, else the model's input shape when fully known; otherwise verify
refuses and says to pass ``--input``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from typing import Any

import numpy as np

from .core import verify_graph
from .files import VerifyError, load_export
from .graph import Graph
from .recurrent import RECURRENT_KINDS, compare, entry_problem, onnx_value, run_exported
from .report import Check

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


class KerasMissing(ImportError):
    """verify --model MODEL.keras was asked for, and the keras package is not installed."""


def is_keras_file(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).lower().endswith(KERAS_SUFFIXES)


def import_keras() -> Any:
    """keras, with a backend that is installed: when neither KERAS_BACKEND nor
    ~/.keras/keras.json chooses an installed one and TensorFlow (Keras' default) is
    missing, torch or jax is used. A KERAS_BACKEND the user set is never overridden."""
    if "keras" not in sys.modules and not os.environ.get("KERAS_BACKEND"):
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        try:
            with open(os.path.join(home, "keras.json"), encoding="utf-8") as f:
                configured = json.load(f).get("backend")
        except (OSError, ValueError, AttributeError):
            configured = None
        # Keras writes keras.json itself on its first import ("tensorflow"), so a
        # configured backend that is not installed is no choice: it could only fail
        usable = configured and importlib.util.find_spec(str(configured)) is not None
        if not usable and importlib.util.find_spec("tensorflow") is None:
            for backend in ("torch", "jax"):
                if importlib.util.find_spec(backend) is not None:
                    os.environ["KERAS_BACKEND"] = backend
                    break
    try:
        import keras
    except ImportError as e:
        raise KerasMissing(
            "verify --model with a Keras file needs the keras package and one of its "
            f"backends (pip install mpslayout[keras] torch): {e}") from None
    return keras


def input_array(keras_model: Any, doc: dict[str, Any], given: Any, seed: int,
                 input_dims: dict[str, Any] | None = None) -> tuple[np.ndarray, str]:

    if len(keras_model.inputs) != 1:
        raise VerifyError(f"the model has {len(keras_model.inputs)} inputs; verify --model "
                          "with a Keras file takes one")
    want = [d if isinstance(d, int) else None for d in keras_model.inputs[0].shape]
    if given is not None:
        if isinstance(given, (str, os.PathLike)):
            a, what = np.load(os.fspath(given), allow_pickle=False), os.fspath(given)
        else:
            a, what = np.asarray(given), "the array given"
        a = np.asarray(a, dtype=np.float32)
        if a.ndim != len(want) or any(d is not None and d != s for d, s in zip(want, a.shape)):
            raise VerifyError(f"--input has shape {list(a.shape)}; the model's input is "
                              f"{[d or '?' for d in want]} (NHWC, Keras' own layout)")
        return a, f"{what}; shape {list(a.shape)} (NHWC)"
    if input_dims:
        name = keras_model.inputs[0]._keras_history[0].name
        if set(input_dims) != {name}:
            raise VerifyError(f"--input-dims names {sorted(input_dims)}; the model's input "
                              f"is {name!r}")
        dims = [int(d) for d in input_dims[name]]
        if len(dims) != len(want) or any(d is not None and d != s
                                         for d, s in zip(want[1:], dims[1:])):
            raise VerifyError(f"--input-dims {name}={dims}; the model's input is "
                              f"{[d or '?' for d in want]} (NHWC, Keras' own layout)")
        recorded, how = {name: dims}, "--input-dims"
    else:
        recorded, how = doc.get("inputs") or {}, "dims recorded at export"
    dims = next(iter(recorded.values())) if len(recorded) == 1 else None
    if dims is None:
        if any(d is None for d in want[1:]):
            raise VerifyError(
                f"the model's input is {[d or '?' for d in want]} and the export recorded no "
                "dims: pass --input X.npy (NHWC), whose height and width let every kernel "
                "tap meet data")
        dims, how = [want[0] or 1, *want[1:]], "the model's input shape"
    a = np.random.default_rng(seed).standard_normal([int(d) for d in dims])
    return a.astype(np.float32), (f"seeded standard normal (seed {seed}), {how}; shape "
                                  f"{list(dims)} (NHWC)")


def keras_values(keras: Any, model: Any, tr: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """Keras' value of every tensor of the translation, in the graph's layout."""
    names = [n for n in tr.tensors if n not in tr.inputs[:len(model.inputs)]]
    kts = [tr.tensors[n][0] for n in names]
    pre = list(tr.preacts.items())
    sub = keras.Model(model.inputs, kts + [kt for _, (_, kt) in pre])
    out = sub([x], training=False)
    out = out if isinstance(out, (list, tuple)) else [out]
    values = {n: tr.to_graph(n, np.asarray(keras.ops.convert_to_numpy(v), np.float32))
              for n, v in zip(names, out)}
    # a fused activation's input: the layer itself, run by Keras with a linear activation
    for (n, (layer, _)), v in zip(pre, out[len(names):]):
        act = layer.activation
        try:
            layer.activation = keras.activations.linear
            y = keras.ops.convert_to_numpy(layer(v))
        finally:
            layer.activation = act
        a = np.asarray(y, np.float32)
        values[n] = np.ascontiguousarray(a.transpose(0, 3, 1, 2)) if a.ndim == 4 else a
    for s, x_name in tr.sigmoids.items():  # element-wise: the graph's layout will do
        if x_name in values:
            values[s] = np.asarray(keras.ops.convert_to_numpy(
                keras.ops.sigmoid(values[x_name])), np.float32)
    known = {**values, tr.inputs[0]: tr.to_graph(tr.inputs[0], x)} if tr.inputs else values
    for y, spec in tr.recurrent.items():
        if spec.input in known:
            values[y] = known[y] = _keras_sequences(keras, spec.layers, known[spec.input])
    for name, (srcs, fn) in tr.derived.items():  # Keras' values moved (Transpose, Slice)
        if all(s in known for s in srcs):
            values[name] = known[name] = np.ascontiguousarray(
                fn(*(known[s] for s in srcs)), np.float32)
    return values


def _keras_sequences(keras: Any, layers: list[Any], x: np.ndarray) -> np.ndarray:
    """ONNX's ``Y`` ``(T, dirs, B, H)`` as Keras computes it: each direction's recurrent
    layer rebuilt with ``return_sequences=True`` and its own weights, run on ``x``
    ``(B, T, I)``; a go_backwards layer's sequence put back in time order."""
    out = [_keras_run(keras, layer, x).transpose(1, 0, 2) for layer in layers]
    return np.ascontiguousarray(np.stack(out, axis=1))


def translation_errors(tr: Any, values: dict[str, np.ndarray]) -> dict[str, str]:
    """Recurrent nodes of the translation that ONNX Runtime, run on Keras' input to them,
    computes differently from Keras: {node name: what differs}. Such a difference is a bug
    of :mod:`mpslayout.keras_onnx`, not of the export, and is reported as such."""

    g = Graph(tr.model, {k: tuple(v.shape) for k, v in values.items()})
    out = {}
    for i, node in enumerate(g.nodes):
        want = values.get(node.output[0]) if node.output[0] in tr.recurrent else None
        if want is None or node.input[0] not in values:
            continue
        try:
            got = onnx_value(g, i, values)
        except Exception as e:  # ONNX Runtime refuses the node: say so, do not crash
            out[g.names[i]] = f"ONNX Runtime cannot run it ({type(e).__name__}: {e})"
            continue
        diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else np.inf
        if not diff <= 1e-4 * max(1.0, float(np.max(np.abs(want), initial=0.0))):
            out[g.names[i]] = f"ONNX Runtime's Y differs from Keras' by {diff:.3g}"
    return out


def _image_rnn_rows(keras: Any, model: Any, report: Any, layers: list[Any],
                    x: np.ndarray) -> None:
    """Judge the exported image RNN directions (ConvLSTM2D: no ONNX operator, so no
    translation) against Keras directly: each direction's Keras layer, rebuilt with
    ``return_sequences=True`` and its own weights, on Keras' input to the layer, against
    the MPS formula run from the files (``layers``: the export, as load_export read it)."""

    exported = {e.name: e for e in layers}
    inputs: dict[str, np.ndarray] = {}  # Keras' input to a layer: both directions read it
    for row in report.rows:
        e = exported.get(row.name)
        if e is None or e.kind not in RECURRENT_KINDS or entry_problem(e.entry) is not None:
            continue  # not recurrent, or its row already names what is wrong with it
        rec = e.entry["recurrent"]
        if rec.get("layer") != "MPSRNNImageInferenceLayer":
            continue
        src = e.entry.get("source", {})
        try:
            layer = model.get_layer(src.get("layer"))
        except ValueError:
            row.error = f"Keras layer {src.get('layer')!r} is not in the model"
            continue
        inner = layer
        if type(layer).__name__ == "Bidirectional":
            backward = rec["layerSequenceDirection"] == "backward"
            inner = layer.backward_layer if backward else layer.forward_layer
        try:  # Keras' input to the layer (one call site), and the direction on it
            if layer.name not in inputs:
                inputs[layer.name] = np.asarray(keras.ops.convert_to_numpy(
                    keras.Model(model.inputs, layer.input)([x], training=False)), np.float32)
            xs = inputs[layer.name]
            want = np.swapaxes(_keras_run(keras, inner, xs), 0, 1)  # (T, B, h, w, C)
        except (ValueError, AttributeError, TypeError) as err:
            row.error = f"Keras cannot run layer {layer.name!r} alone: {err}"
            continue
        row.tensor, row.shape = f"{inner.name} (Keras)", list(want.shape)
        try:
            got = run_exported(e.entry, e.arrays, np.swapaxes(xs, 0, 1))
        except ValueError as err:  # files that do not fit the manifest's sizes
            row.error = f"the files cannot run as this cell: {err}"
            continue
        if got.shape != want.shape:  # padding='valid', strides: flagged at export
            row.error = (f"MPS's output {list(got.shape)} (T, batch, height, width, C) is "
                         f"not the shape of Keras' {list(want.shape)}")
            continue
        row.error = None
        row.isolated = Check(*compare(got, want, report.atol, report.rtol))
        row.notes.append("judged by Keras itself (ONNX has no ConvLSTM); MPS converts these "
                         "weights to float16 (MPSRNNLayer.h), which is not modelled here")
        report.layers_checked += 1


def _keras_run(keras: Any, layer: Any, x: np.ndarray) -> np.ndarray:
    """One recurrent Keras layer rebuilt with ``return_sequences=True`` and its own
    weights, run on ``x`` ``(B, T, ...)``; a go_backwards layer's output put back in time
    order."""
    cfg = {**layer.get_config(), "return_sequences": True, "return_state": False}
    clone = type(layer).from_config(cfg)
    clone.build(tuple(x.shape))
    clone.set_weights(layer.get_weights())
    y = np.asarray(keras.ops.convert_to_numpy(clone(x, training=False)), np.float32)
    return y[:, ::-1] if layer.go_backwards else y


def _explain_rows(report: Any, doc: dict[str, Any], tr: Any, bad: dict[str, str]) -> None:
    """Say why an exported layer was not judged: its Keras layer has no translation, or
    the translation of a recurrent layer disagrees with Keras (``bad``)."""
    untranslated = {u["name"]: u["reason"] for u in tr.untranslated}
    entries = {e.get("name"): e for e in doc.get("layers", []) if isinstance(e, dict)}
    for row in report.rows:
        e = entries.get(row.name, {})
        keras_layer = e.get("source", {}).get("layer")
        if keras_layer in untranslated and row.error is not None:
            row.error = (f"Keras layer {keras_layer!r} has no ONNX translation "
                         f"({untranslated[keras_layer]}): this layer is not verified")
        elif keras_layer in bad and "recurrent" in e:
            row.error = (f"the ONNX translation of Keras layer {keras_layer!r} is wrong: "
                         f"{bad[keras_layer]}. A bug of mpslayout.keras_onnx, not of the "
                         "export: this layer is not judged")


def load_translated(keras: Any, path: str) -> tuple[Any, Any]:
    """(the Keras model in ``path``, its ONNX translation), or a VerifyError saying why."""
    from ..keras_onnx import Untranslatable, keras_as_onnx

    try:
        kmodel = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a file it cannot read
        raise VerifyError(f"Keras cannot load {path}: {type(e).__name__}: {e}") from None
    try:
        return kmodel, keras_as_onnx(kmodel)
    except Untranslatable as e:
        raise VerifyError(f"{path}: {e}") from None


def verify_keras(outdir: str | os.PathLike[str], model: str | os.PathLike[str], *,
                 input: Any = None, input_dims: dict[str, Any] | None = None,
                 atol: float = 1e-4, rtol: float = 1e-4, storage: str | None = None,
                 seed: int = 0, allow_inexact: bool = False) -> Any:
    """Check the export in ``outdir`` against the Keras ``model`` file, Keras as the
    oracle (module docstring); returns verify's Report (``allow_inexact`` as in
    :func:`mpslayout.verify.verify`). Raises :class:`KerasMissing`
    without keras, VerifyError when nothing can be compared."""
    keras = import_keras()  # first: without keras, say that and nothing else
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise VerifyError(f"model file not found: {path}")
    loaded = load_export(outdir)
    doc, exported = loaded
    kmodel, tr = load_translated(keras, path)
    x, what = input_array(kmodel, doc, input, seed, input_dims)
    values = keras_values(keras, kmodel, tr, x)
    feeds = {tr.inputs[0]: np.ascontiguousarray(tr.to_graph(tr.inputs[0], x))}
    feeds.update({n: values[n] for n in tr.inputs[1:]})

    def oracle(names: Any) -> dict[str, np.ndarray]:
        return {n: values[n] for n in names if n in values}

    report = verify_graph(outdir, tr.model, feeds, oracle, model_label=path,
                          oracle_label=f"Keras {keras.__version__} "
                          f"({keras.backend.backend()} backend)", input_label=what,
                          atol=atol, rtol=rtol, storage=storage, loaded=loaded)
    report.allow_inexact = bool(allow_inexact)
    _explain_rows(report, doc, tr, translation_errors(tr, values) if tr.recurrent else {})
    _image_rnn_rows(keras, kmodel, report, exported, x)
    for u in tr.untranslated:
        report.not_verified.append({"name": u["name"], "op": u["op"],
                                    "reason": f"no ONNX translation ({u['reason']}): Keras' "
                                    "value used"})
    return report
