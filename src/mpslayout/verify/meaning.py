"""Raw tensors verified by their meaning: a ``tensor`` layer (an embedding table, PRelu
slopes, LayerNormalization scale and shift, an expanded constant) holds data for a custom
kernel, or for an MPS kernel that takes it as it is. Where the op reading it has a plain
meaning, verify runs that meaning from the export's file on the oracle's input and
compares the result like any layer's: a table written in the wrong order, slopes
reversed, scale and shift swapped all fail, naming the layer.

Also here: per-channel layers on tensors that are not images (a BatchNorm1d on
``(N, C, L)``, a BatchNorm3d or PReLU on ``(N, C, D, H, W)``): each value depends on its
own channel only, so the tensor is an image of ``C`` channels and ``D*H*W`` pixels, as an
app would lay it out, and the layer is judged on the oracle's input (in isolation).
"""

from __future__ import annotations

import numpy as np

from .. import reference as R
from . import tolerance as T
from .report import Row
from .values import as_val
from .walk import Walk

__all__ = ["MeaningSteps", "channel_image"]


def channel_image(a: np.ndarray, storage: np.dtype) -> R.Image:
    """``(N, C, ...)`` as an NCHW image of C channels, the trailing axes as one column."""
    n, c = a.shape[:2]
    return R.Image.from_nchw(np.ascontiguousarray(a.reshape(n, c, -1, 1)), storage)


class MeaningSteps(Walk):
    """Nodes whose learned tensors are raw "tensor" layers, run by the op's meaning (or,
    failing that, by the MPS kernel of :class:`.op_steps.OpSteps` reading them)."""

    def _run_raw(self, i: int, like: np.ndarray | None) -> None:
        """A node whose learned tensors the export wrote as raw "tensor" layers: run by
        that op's meaning from the files (:mod:`.meaning`), else as its MPS kernel reading
        them, else not verified."""
        layers = self.tensor_layers[self.g.names[i]]
        if like is not None and self._run_meaning(i, like):
            return
        if self._has_kernel(i):  # type: ignore[attr-defined]
            self._run_op(i, raw=False)  # type: ignore[attr-defined]
            return
        if like is not None and self._run_flat_arithmetic(i, like):  # type: ignore[attr-defined]
            return
        self._borrow(i, f"exported as a raw tensor ({', '.join(repr(x.name) for x in layers)})"
                        " for a custom kernel: no MPSCNN kernel, and verify knows no meaning "
                        f"of ONNX {self.g.nodes[i].op_type} to run it by")

    def _promote(self, i: int, before: int) -> None:
        """The rows a raw tensor's node added, when every one of its raw tensors was read
        from the export's files: the row is that layer's (it counts as a layer checked)."""
        layers = self.tensor_layers[self.g.names[i]]
        rows = self.report.rows[before:]
        read = all(len(x.entry.get("source", {}).get("tensors") or []) == 1
                   and str(x.entry["source"]["tensors"][0]) in self.exported for x in layers)
        if not rows or not read:
            return
        for row in rows:
            if row.layer:
                continue
            row.layer = True  # its kind stays the kernel that ran (MPSCNNNeuronPReLU)
            row.name = ", ".join(x.name for x in layers)
            row.notes.append(f"the raw tensor{'s' if len(layers) > 1 else ''} run by "
                             f"{self.g.nodes[i].op_type}'s meaning, read from the export's "
                             "files")
            self.report.layers_checked += 1

    def _run_meaning(self, i: int, like: np.ndarray) -> bool:
        op = self.g.nodes[i].op_type
        if like.dtype.kind != "f":
            return False
        if op == "Gather":
            return self._gather(i, like)
        if op == "LayerNormalization":
            return self._layer_norm(i, like)
        if op == "Expand":
            return self._expand(i, like)
        if op == "PRelu" and like.ndim not in (2, 4):
            return self._channelwise_op(i, like)
        return False

    def _meaning_row(self, i: int, like: np.ndarray, y: np.ndarray, explained: np.ndarray,
                     note: str) -> None:
        n = self.g.nodes[i]
        row = Row(len(self.report.rows) + 1, self.g.names[i], n.op_type, n.op_type, False,
                  n.output[0], list(like.shape), notes=[note])
        row.isolated = T.check(y.astype(np.float64), like, self.atol, self.rtol, explained)
        self.report.rows.append(row)
        self.report.operators_verified += 1
        self.vals[n.output[0]] = as_val(y.astype(np.float32) if row.ok else like,
                                        self.storage)
        self.done.add(i)

    def _gather(self, i: int, like: np.ndarray) -> bool:
        """Gather of rows of an embedding table (axis 0): ``table[indices]``."""
        n = self.g.nodes[i]
        table = self.exported.get(n.input[0])
        idx = self.values.get(n.input[1])
        if idx is None:
            idx = self.g.const(n.input[1])
        axis = int(self.g.attrs(i).get("axis", 0))
        if table is None or idx is None or np.asarray(idx).dtype.kind not in "iu" or axis != 0:
            return False
        idx = np.asarray(idx).astype(np.int64)
        if idx.size and (idx.min() < -table.shape[0] or idx.max() >= table.shape[0]):
            return False
        y = np.asarray(table, np.float64)[idx]
        if y.shape != like.shape:
            return False
        # one value read, stored in the image type: its rounding, and the file's own
        u = self.u_s + (T.unit(table.dtype) if table.dtype == np.float16 else 0.0)
        self._meaning_row(i, like, y, u * np.abs(y),
                          "Gather of rows of the embedding table: table[indices], the table "
                          "read from the export's file, the indices the oracle's")
        return True

    def _expand(self, i: int, like: np.ndarray) -> bool:
        """Expand of a constant (PyTorch's zero initial state of an LSTM): the constant
        broadcast to the result's shape."""
        n = self.g.nodes[i]
        c = self.exported.get(n.input[0])
        if c is None:
            return False
        try:
            y = np.asarray(c, np.float64) * np.ones(like.shape)
        except ValueError:
            return False
        if y.shape != like.shape:
            return False
        u = T.unit(c.dtype) if c.dtype == np.float16 else 0.0
        self._meaning_row(i, like, y, u * np.abs(y),
                          "Expand: the constant from the export's file broadcast to the "
                          "result's shape")
        return True

    def _layer_norm(self, i: int, like: np.ndarray) -> bool:
        """LayerNormalization: ``(x - mean) / sqrt(var + eps) * scale + shift`` over the
        axes from ``axis`` on, scale and shift from the export's files."""
        n = self.g.nodes[i]
        x = self.values.get(n.input[0])
        a = self.g.attrs(i)
        if x is None or x.shape != like.shape:
            return False
        axis = int(a.get("axis", -1)) % x.ndim
        eps = float(a.get("epsilon", 1e-5))
        scale = self.exported.get(n.input[1]) if len(n.input) > 1 else None
        shift = self.exported.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if scale is None or (len(n.input) > 2 and n.input[2] and shift is None):
            return False
        axes = tuple(range(axis, x.ndim))
        xs = np.asarray(x, np.float64)
        centred = xs - xs.mean(axis=axes, keepdims=True)
        xhat = centred / np.sqrt((centred**2).mean(axis=axes, keepdims=True) + eps)
        try:
            s = np.broadcast_to(np.asarray(scale, np.float64), like.shape)
            b = 0.0 if shift is None else np.broadcast_to(np.asarray(shift, np.float64),
                                                          like.shape)
        except ValueError:
            return False
        y = xhat * s + b
        k = int(np.prod([x.shape[d] for d in axes]))
        mag = np.abs(xhat * s) + np.abs(b)
        u_w = T.unit(scale.dtype) if scale.dtype == np.float16 else 0.0
        # the oracle's float32 mean and variance over k values move x-hat by a few k*u32
        explained = (4 * k * T.U32 + u_w) * mag + self.u_s * np.abs(y)
        self._meaning_row(i, like, y, explained,
                          f"LayerNormalization over the last {len(axes)} axes (epsilon "
                          f"{eps:g}): scale and shift read from the export's files, on the "
                          "oracle's input")
        return True

    def _channelwise_op(self, i: int, like: np.ndarray) -> bool:
        """A per-channel neuron (PRelu) on an (N, C, ...) tensor that is not an image."""
        n = self.g.nodes[i]
        x = self.values.get(n.input[0])
        if x is None or x.shape != like.shape or x.ndim < 2:
            return False
        try:
            kernel = self._kernel(i)
        except ValueError:
            return False
        if kernel is None:
            return False
        img = channel_image(x, self.storage)
        exact = np.asarray(x, np.float64).reshape(img.batch, img.channels, -1, 1)
        delta = np.abs(img.nhwc().astype(np.float64) - exact.transpose(0, 2, 3, 1))
        y, err = self._op_result(kernel, [img], i, [delta])  # type: ignore[attr-defined]
        self._meaning_row(i, like, y.nchw().reshape(like.shape), err.transpose(0, 3, 1, 2)
                          .reshape(like.shape),
                          f"a per-channel {n.op_type} on a {like.ndim}-D tensor, run as an "
                          f"image of {like.shape[1]} channels (the trailing axes as pixels) "
                          "on the oracle's input")
        return True
