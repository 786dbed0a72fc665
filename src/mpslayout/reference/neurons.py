"""MPSCNNNeuron: every activation MPS has, with the parameters (a, b, c) of
MPSNNNeuronDescriptor and the formulas of MPSCNNNeuronType (MPSCNNNeuronType.h):

=============  ==========================================  ==========================
kind           f(x)                                        MPSCNNNeuronType
=============  ==========================================  ==========================
relu           x if x >= 0 else a*x                        ReLU (a = 0: plain ReLU)
linear         a*x + b                                     Linear
sigmoid        1 / (1 + e^-x)                              Sigmoid
hard_sigmoid   clamp(a*x + b, 0, 1)                        HardSigmoid
tanh           a * tanh(b*x)                               TanH
absolute       |x|                                         Absolute
soft_plus      a * log(1 + e^(b*x))                        SoftPlus
soft_sign      x / (1 + |x|)                               SoftSign
elu            x if x >= 0 else a*(e^x - 1)                ELU
prelu          x if x >= 0 else a[c]*x (a per channel)     PReLU
relun          min(x if x >= 0 else a*x, b)                ReLUN
power          (a*x + b)^c                                 Power
exponential    c^(a*x + b), base e when c == -1            Exponential
logarithm      log_c(a*x + b), base e when c == -1         Logarithm
gelu           0.5 * x * (1 + erf(x / sqrt(2)))            GeLU
=============  ==========================================  ==========================

Each is computed in float64 and rounded once to the destination's storage type.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ._common import _finish, _out_dtype
from .image import Image

__all__ = ["LIPSCHITZ", "MONOTONE", "NEURONS", "neuron"]


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x) if x.size else x


def _base(c: float) -> float:
    return math.e if c == -1.0 else c


_F = Callable[[np.ndarray, Any, float, float], np.ndarray]

_FORMULAS: dict[str, _F] = {
    "relu": lambda x, a, b, c: np.where(x >= 0, x, a * x),
    "linear": lambda x, a, b, c: a * x + b,
    "sigmoid": lambda x, a, b, c: 0.5 * (1.0 + np.tanh(0.5 * x)),  # 1/(1+e^-x), no overflow
    "hard_sigmoid": lambda x, a, b, c: np.clip(a * x + b, 0.0, 1.0),
    "tanh": lambda x, a, b, c: a * np.tanh(b * x),
    "absolute": lambda x, a, b, c: np.abs(x),
    "soft_plus": lambda x, a, b, c: a * np.logaddexp(0.0, b * x),
    "soft_sign": lambda x, a, b, c: x / (1.0 + np.abs(x)),
    "elu": lambda x, a, b, c: np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0.0))),
    "prelu": lambda x, a, b, c: np.where(x >= 0, x, a * x),
    "relun": lambda x, a, b, c: np.minimum(np.where(x >= 0, x, a * x), b),
    "power": lambda x, a, b, c: np.power(a * x + b, c),
    "exponential": lambda x, a, b, c: np.power(_base(c), a * x + b),
    "logarithm": lambda x, a, b, c: np.log(a * x + b) / math.log(_base(c)),
    "gelu": lambda x, a, b, c: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
}
NEURONS = tuple(_FORMULAS)


def _lip(kind: str, a: Any, b: float, c: float) -> float | None:
    """A Lipschitz constant of the neuron (None when it has none on the whole line)."""
    amax = float(np.max(np.abs(a))) if np.size(a) else 0.0
    return {"relu": max(1.0, amax), "prelu": max(1.0, amax), "relun": max(1.0, amax),
            "linear": amax, "sigmoid": 0.25, "hard_sigmoid": amax, "tanh": amax * abs(b),
            "absolute": 1.0, "soft_plus": amax * abs(b), "soft_sign": 1.0,
            "elu": max(1.0, amax), "gelu": 1.13}.get(kind)


LIPSCHITZ = _lip
# kinds monotone in x for every parameter value a verifier meets (a >= 0, b >= 0): the
# largest change over [x - d, x + d] is at one of the two ends
MONOTONE = frozenset(("sigmoid", "hard_sigmoid", "tanh", "soft_plus", "soft_sign", "elu",
                      "exponential", "logarithm", "linear"))


def neuron(src: Image, kind: str, *, a: Any = 0.0, b: float = 0.0, c: float = 0.0,
           out_dtype: Any = None) -> Image:
    """MPSCNNNeuron of type ``kind`` with parameters ``a``, ``b``, ``c`` (the table in the
    module docstring); for ``prelu``, ``a`` is a vector of one slope per channel.

    Equals ``f(src.nhwc(float64))`` rounded once to the storage type, padding zero.
    """
    fn = _FORMULAS.get(kind)
    if fn is None:
        raise ValueError(f"kind must be one of {NEURONS}, got {kind!r}")
    x = src.nhwc()
    if kind == "prelu":
        slopes = np.asarray(a, np.float64).reshape(-1)
        if slopes.size not in (1, int(src.channels)):
            raise ValueError(f"prelu needs 1 or {src.channels} slopes, got {slopes.size}")
        a = slopes
    else:
        a = float(a)
    with np.errstate(all="ignore"):  # log/power of out-of-domain values give nan, as MPS
        y = fn(x, a, float(b), float(c))
    return _finish(np.asarray(y, np.float64), _out_dtype(src, out_dtype))
