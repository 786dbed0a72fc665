"""How MPS reads 8-bit convolution weights (``MPSCNNConvolution.h``,
``rangesForUInt8Kernel`` / ``lookupTableForUInt8Kernel``), restated for the reference
executor so that verify does not call the exporter's quantizer:

- linear: ``float unorm8_weight = uint8_weight / 255.0f; weight = unorm8_weight * (max -
  min) + min`` with ``(min, max)`` the range of the weight's output channel (axis 0);
- lookup table: ``weight = lut[uint8_weight]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["dequantize", "float_weights"]

_F4 = np.float32


def dequantize(q: np.ndarray, ranges: np.ndarray | None = None,
               lut: np.ndarray | None = None) -> np.ndarray:
    """float32 weights from uint8 ``q`` (output channels first) and its ranges or LUT."""
    if lut is not None:
        return np.asarray(lut, _F4).reshape(256)[q]
    if ranges is None:
        raise ValueError("uint8 weights need their ranges or lookup table")
    r = np.asarray(ranges, _F4).reshape(q.shape[0], 2)
    shape = (q.shape[0],) + (1,) * (q.ndim - 1)
    lo, hi = r[:, 0].reshape(shape), r[:, 1].reshape(shape)
    unorm = q.astype(_F4) / _F4(255.0)
    return (unorm * (hi - lo) + lo).astype(_F4)


def float_weights(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A layer's arrays with uint8 ``weights`` replaced by what MPS reads from them."""
    out = dict(arrays)
    w = out.get("weights")
    if w is not None and w.dtype == np.uint8:
        out["weights"] = dequantize(w, out.pop("ranges", None), out.pop("lut", None))
    return out
