"""``mpslayout verify WEIGHTS.safetensors --model MODEL.onnx``: an MLX export checked by MLX
itself. Every exported layer runs through MLX's own operator on the CPU
(:mod:`.mlx_ops`), fed ONNX Runtime's input to that layer (channels first moved to MLX's
channels last), and is compared with ONNX Runtime's output under verify's tolerance model
(docs/verify.md, "MLX exports"). A recurrent layer is also run on a seeded random sequence
of several steps against ONNX Runtime running its node alone, so that its recurrent
matrices are exercised whatever the model's input. The first wrong layer is named.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .files import VerifyError
from .graph import Graph, onnx_module
from .keras_oracle import is_keras_file
from .mlx_ops import run_layer, run_recurrent, weight_unit
from .onnx_path import input_feeds
from .ort import onnx_runtime_oracle, onnxruntime_module
from .recurrent import onnx_value
from .report import Report, Row
from .tolerance import U32, check

__all__ = ["verify_mlx"]

_RUN = ("conv", "depthwise", "expand_depthwise", "conv_subpixel", "transposed", "fc",
        "dense_reshape", "batch_norm")
_EXERCISE_STEPS = 4


def _mlx() -> Any:
    try:
        import mlx.core as mx
    except ImportError:
        raise VerifyError("verify of an MLX export runs MLX's own kernels: pip install "
                          "'mpslayout[mlx]' (mlx[cpu] on Linux)") from None
    return mx


_MX_OPS = {"Add": "add", "Sub": "subtract", "Mul": "multiply", "Div": "divide",
           "Pow": "power"}


def _apply_constant(record: Mapping[str, Any], image: np.ndarray) -> np.ndarray:
    """A folded op's ``record`` applied to NCHW ``image`` by MLX on its channels-last
    view, as a port applies it: the constant a number or one per channel (the last axis),
    at input ``constant_input``."""
    mx = _mlx()
    op = _MX_OPS.get(str(record.get("op")))
    c = np.asarray(record.get("constant"), np.float32)
    if op is None or record.get("constant_input") not in (0, 1) or c.ndim > 1 or \
            (c.ndim == 1 and c.size != image.shape[1]):
        raise VerifyError(f"the manifest folds {record.get('op')} {record.get('node')!r} with "
                          f"constant {record.get('constant')!r} as input "
                          f"{record.get('constant_input')!r}: not an op, a number or one "
                          f"per channel of the image's {image.shape[1]}, and input 0 or 1")
    x = mx.array(np.ascontiguousarray(np.moveaxis(image, 1, -1)))
    a, b = (mx.array(c), x) if record["constant_input"] == 0 else (x, mx.array(c))
    y = np.asarray(getattr(mx, op)(a, b))
    return np.ascontiguousarray(np.moveaxis(y, -1, 1))


def _load(path: str) -> tuple[Any, dict[str, Any]]:
    from ..mlx import files

    if not os.path.isfile(path):
        raise VerifyError(f"export file not found: {path}")
    try:
        weights = files.load(path)
    except (OSError, ValueError, TypeError) as e:
        raise VerifyError(f"cannot read {path}: {e}") from None
    if not weights.tensors or not isinstance(weights.facts.get("layers"), list):
        raise VerifyError(f"{path} was not written by mpslayout export --target mlx (its "
                          "metadata has no layer records)")
    return weights, weights.facts


class _Walk:
    """The graph, the oracle's values and the report being filled."""

    def __init__(self, g: Graph, values: dict[str, np.ndarray], arrays: Any,
                 report: Report, u_w: float) -> None:
        self.g = g
        self.values, self.arrays, self.report, self.u_w = values, arrays, report, u_w
        self.by_name = {n: i for i, n in enumerate(self.g.names)}

    def node(self, record: Mapping[str, Any]) -> int | None:
        src = record["source"]
        for key in ("node", "layer"):  # ONNX exports name the node, Keras ones the layer
            i = self.by_name.get(str(src.get(key)))
            if i is not None:
                return i
        w = src.get("weights")  # a state_dict export: its weight's initializer name
        hits = [k for k, n in enumerate(self.g.nodes) if w and w in n.input]
        return hits[0] if len(hits) == 1 else None

    def linear_input(self, i: int, record: Mapping[str, Any]) -> str:
        """The tensor an MLX Linear reads: after a flatten of an image, the image itself
        (the port flattens it channels last); else the node's own input."""
        src = record["source"].get("input")
        if isinstance(src, str) and src in self.values and self.values[src].ndim > 2:
            return self.elementwise(src, record)
        t = self.g.nodes[i].input[0]
        while self.values.get(t) is not None and self.values[t].ndim <= 2:
            k = self.g.producer.get(t)
            if k is None or self.g.nodes[k].op_type not in ("Flatten", "Reshape"):
                break
            t = self.g.nodes[k].input[0]
        if self.values.get(t) is None or self.values[t].ndim <= 2:
            return self.g.nodes[i].input[0]
        k = self.g.producer.get(t)  # a translation's move to channels last: before it
        if k is not None and self.g.nodes[k].op_type == "Transpose":
            perm = list(self.g.attrs(k).get("perm") or [])
            src = self.g.nodes[k].input[0]
            if perm == [0, *range(2, len(perm)), 1]:
                if src not in self.values:  # the oracle gave its channels-last side only
                    self.values[src] = np.ascontiguousarray(np.moveaxis(self.values[t], -1, 1))
                return src
        return t

    def elementwise(self, src: str, record: Mapping[str, Any]) -> str:
        """Image ``src`` after the per-element ops of a permuted flatten folded into the
        Linear (a relu between the permute and the flatten), which the port applies to its
        image before the Linear: ONNX Runtime runs each node alone on the oracle's image;
        an op with a constant (``x * 0.5``, a per-channel scale) is applied by MLX with the
        record's constant and operand order, as the port applies it (a wrong one then shows
        in the Linear's output). Returns the name the result is held under."""
        fc = record.get("geometry", {}).get("fully_connected") or {}
        for f in fc.get("folded") or []:
            if not f.get("elementwise"):
                continue
            i = self.by_name.get(str(f.get("node")))
            if i is None:
                raise VerifyError(f"the manifest folds node {f.get('node')!r}, which the "
                                  "model does not have")
            name = f"{src} -> {f['node']}"
            if name not in self.values and "constant" in f:
                self.values[name] = _apply_constant(f, self.values[src])
            elif name not in self.values:
                try:
                    self.values[name] = onnx_value(self.g, i, {
                        self.g.nodes[i].input[0]: self.values[src]})
                except Exception as e:  # any failure of the one-node model
                    raise VerifyError(f"ONNX Runtime could not run {f.get('op')} "
                                      f"{f['node']!r} on image {src!r}: "
                                      f"{type(e).__name__}: {e}") from None
            src = name
        return src

    def value(self, t: str) -> np.ndarray | None:
        """The oracle's value of ``t``, or, where the oracle gives only its Transpose (a
        Keras Conv1D's (N, C, L) output, moved back to (N, L, C)), that transposed back."""
        if t in self.values:
            return self.values[t]
        k = self.g.sole_consumer(t)
        node = None if k is None else self.g.nodes[k]
        if node is not None and node.op_type == "Transpose" and node.output[0] in self.values:
            perm = self.g.attrs(k).get("perm")
            if perm is not None:
                return np.ascontiguousarray(
                    np.transpose(self.values[node.output[0]], np.argsort(list(perm))))
        return None

    def output(self, i: int, record: Mapping[str, Any]) -> str:
        """The tensor the layer computes: the node's output through what it folded."""
        out = self.g.nodes[i].output[0]
        for f in record["source"].get("fused", []) or []:
            k = self.by_name.get(str(f.get("node")))
            if k is not None:
                out = self.g.nodes[k].output[0]
        return out

    def add(self, record: Mapping[str, Any], op: str, tensor: str, got: np.ndarray,
            want: np.ndarray, explained: Any, atol: float, rtol: float,
            notes: list[str] | None = None, error: str | None = None) -> Row:
        row = Row(len(self.report.rows), record["name"], op, record["rule"], True, tensor,
                  list(want.shape), notes=list(notes or []))
        if error is None:
            if got.size == want.size and got.shape != want.shape:
                # a 1-D convolution run as H = 1, a Dense on a 1x1 image
                got = got.reshape(want.shape)
                if np.ndim(explained) and np.size(explained) == want.size:
                    explained = np.reshape(explained, want.shape)
            if got.shape != want.shape:
                error = f"MLX gives shape {list(got.shape)}, the oracle {list(want.shape)}"
            else:
                row.isolated = check(got.astype(np.float64), want, atol, rtol, explained)
        row.error = error
        self.report.rows.append(row)
        self.report.layers_checked += 1
        return row


def _recurrent(w: _Walk, i: int, record: Mapping[str, Any], atol: float, rtol: float) -> None:
    node = w.g.nodes[i]
    params = record.get("params", {})
    rec = record.get("geometry", {}).get("recurrent", {})
    backward = rec.get("layerSequenceDirection") == "backward"
    d = int(params.get("direction", 0))
    if backward and w.values[node.output[0]].shape[1] == 2:
        d = 1  # a Keras Bidirectional: one layer per direction, one node for both
    path, rule = str(record["module"]), record["rule"]

    def state(pos: int, values: Mapping[str, np.ndarray]) -> np.ndarray | None:
        name = node.input[pos] if len(node.input) > pos else ""
        return None if not name or name not in values else values[name][d]

    def run(values: Mapping[str, np.ndarray]) -> np.ndarray:
        return run_recurrent(rule, path, w.arrays, values[node.input[0]], state(5, values),
                             state(6, values) if rule == "lstm" else None, backward,
                             record.get("nonlinearity"))

    def bound(x: np.ndarray) -> float:
        wx = [np.abs(np.asarray(v, np.float64)) for k, v in w.arrays.items()
              if k.startswith(path + ".")]
        big = max(float(np.max(v)) if v.size else 0.0 for v in wx)
        n_in = x.shape[-1] + max(a.shape[-1] for a in wx if a.ndim == 2) + 1
        # each step's pre-activations sum n_in terms of size <= big * max(|x|, 1); the
        # gates' slopes are <= 1, so an error in them moves h by at most as much, per step
        return x.shape[0] * n_in * big * max(1.0, float(np.max(np.abs(x)))) \
            * (n_in * U32 + w.u_w)

    x = w.values[node.input[0]]
    want = w.values[node.output[0]][:, d]
    try:
        got = run(w.values)
    except (LookupError, ValueError) as e:
        w.add(record, node.op_type, node.output[0], want, want, 0, atol, rtol,
              error=f"{type(e).__name__}: {e}")
        return
    row = w.add(record, node.op_type, node.output[0], got, want, bound(x), atol, rtol)
    rng = np.random.default_rng(1)
    seq = {node.input[0]: rng.standard_normal((_EXERCISE_STEPS, *x.shape[1:]))
           .astype(np.float32)}
    for pos, n in enumerate(node.input):
        if pos == 0 or not n or w.g.const(n) is not None:
            continue
        if pos not in (5, 6) or n not in w.values:  # W, R, B or sequence_lens computed
            row.notes.append(f"recurrent matrices exercised only by the model's input: its "
                             f"input {n!r} is computed, so the node is not rerun alone")
            return
        seq[n] = rng.standard_normal(w.values[n].shape).astype(np.float32)  # a random state
    want2 = onnx_value(w.g, i, seq)[:, d]
    got2 = run(seq)
    row.chained = check(got2.astype(np.float64), want2, atol, rtol, bound(seq[node.input[0]]))
    row.notes.append(f"also run alone on a seeded random {_EXERCISE_STEPS}-step sequence and "
                     "state (the 'chain' columns), so the recurrent matrices are exercised")


def _onnx_oracle(mpath: str, facts: Mapping[str, Any], input: Any,
                 input_dims: Mapping[str, Sequence[int]] | None, seed: int
                 ) -> tuple[Graph, dict[str, np.ndarray], str]:
    """The ONNX model's graph (shapes inferred for the input), ONNX Runtime's value of
    every tensor, and what the input was."""
    onnx = onnx_module()
    onnxruntime_module()
    try:
        proto = onnx.load(mpath)
    except FileNotFoundError:
        raise VerifyError(f"model file not found: {mpath}") from None
    except Exception as e:
        raise VerifyError(f"cannot read {mpath} as ONNX (an MLX export is verified against "
                          f"an ONNX or Keras model): {type(e).__name__}: {e}") from None
    given: dict[str | None, np.ndarray] = {}
    if input is not None:
        given[None] = (np.load(os.fspath(input), allow_pickle=False)
                       if isinstance(input, (str, os.PathLike)) else np.asarray(input))
    recorded = facts.get("inputs") if isinstance(facts.get("inputs"), dict) else {}
    feeds, how = input_feeds(Graph(proto), given, recorded, input_dims or {}, seed)
    label = ("given" if given else f"seeded standard normal (seed {seed})") + "; shape " \
        + ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items()) \
        + (f" ({how})" if how else "")
    g = Graph(proto, {k: tuple(v.shape) for k, v in feeds.items()})
    names = [o for n in g.nodes for o in n.output if o]
    return g, {**feeds, **onnx_runtime_oracle(proto)(names, feeds)}, label


def _keras_oracle(mpath: str, facts: Mapping[str, Any], input: Any,
                  input_dims: Mapping[str, Sequence[int]] | None, seed: int
                  ) -> tuple[Graph, dict[str, np.ndarray], str, str]:
    """The Keras model's ONNX translation as a graph (for its structure), Keras' value of
    every tensor (channels first, as the translation's), the input and the oracle's name."""
    from .keras_oracle import import_keras, input_array, keras_values, load_translated

    keras = import_keras()
    if not os.path.isfile(mpath):
        raise VerifyError(f"model file not found: {mpath}")
    kmodel, tr = load_translated(keras, mpath)
    x, what = input_array(kmodel, facts, input, seed, dict(input_dims or {}))
    values = keras_values(keras, kmodel, tr, x)
    values[tr.inputs[0]] = np.ascontiguousarray(tr.to_graph(tr.inputs[0], x))
    g = Graph(tr.model, {n: tuple(values[n].shape) for n in tr.inputs if n in values})
    return (g, values, what,
            f"Keras {keras.__version__} ({keras.backend.backend()} backend)")


def verify_mlx(path: str | os.PathLike[str], model: str | os.PathLike[str], *,
               input: Any = None, input_dims: Mapping[str, Sequence[int]] | None = None,
               atol: float = 1e-4, rtol: float = 1e-4, seed: int = 0) -> Report:
    """Check the MLX export ``path`` (a .safetensors written by ``mpslayout export --target
    mlx``) against ``model`` (ONNX, run by ONNX Runtime, or Keras .keras/.h5, run by
    Keras), every layer run by MLX's own operators on the oracle's input to it.
    ``input``: an array or .npy path for the model's only input, else ``input_dims``
    or the dims recorded at export with a seeded normal sample.
    Raises :class:`VerifyError` when nothing can be compared (no mlx, not an MLX export,
    an unreadable model); divergences are in the report."""
    _mlx()
    if atol < 0 or rtol < 0 or not (math.isfinite(atol) and math.isfinite(rtol)):
        raise VerifyError(f"atol and rtol must be finite and >= 0, got {atol}, {rtol}")
    fpath, mpath = os.fspath(path), os.fspath(model)
    weights, facts = _load(fpath)
    if is_keras_file(mpath):
        g, values, label, oracle = _keras_oracle(mpath, facts, input, input_dims, seed)
    else:
        g, values, label = _onnx_oracle(mpath, facts, input, input_dims, seed)
        oracle = "ONNX Runtime"
    wdt = str(facts.get("weights_dtype", "float32"))
    report = Report(fpath, mpath, label, "float32", wdt, float(atol), float(rtol),
                    oracle=oracle)
    w = _Walk(g, values, weights, report, weight_unit(wdt))
    for record in facts["layers"]:
        rule = record["rule"]
        i = w.node(record)
        if i is None:
            report.not_verified.append({"name": record["name"], "op": rule,
                                        "reason": "no node of the model matches this layer "
                                        "(wrong --model?)"})
            continue
        node = w.g.nodes[i]
        if rule in ("lstm", "gru", "rnn"):
            _recurrent(w, i, record, atol, rtol)
            continue
        if rule not in _RUN:
            report.not_verified.append({"name": record["name"], "op": node.op_type,
                                        "reason": "a raw tensor: no MLX module runs it alone"})
            continue
        out = w.output(i, record)
        try:
            x_name = w.linear_input(i, record) if rule in ("fc", "dense_reshape") \
                else node.input[0]
        except VerifyError as e:
            want = w.value(out)
            if want is not None:
                w.add(record, node.op_type, out, want, want, 0, atol, rtol, error=str(e))
                continue
            raise
        x, want = w.value(x_name), w.value(out)
        if x is None or want is None:
            missing = x_name if x is None else out
            report.not_verified.append({"name": record["name"], "op": node.op_type,
                                        "reason": f"the oracle gave no value for "
                                        f"{missing!r}: not checked"})
            continue
        try:
            y, explained = run_layer(rule, record, weights, x, w.g.attrs(i), w.u_w)
        except (KeyError, ValueError) as e:
            w.add(record, node.op_type, out, want, want, 0, atol, rtol,
                  error=f"MLX could not run it: {type(e).__name__}: {e}")
            continue
        w.add(record, node.op_type, out, y, want, explained, atol, rtol)
    for x in facts.get("unsupported", []) + facts.get("skipped", []):
        report.not_verified.append({"name": x["name"], "op": x["op"],
                                    "reason": f"not exported: {x['reason']}"})
    report.operators_verified = report.layers_checked
    return report


