"""mpslayout: exact, fast tensor layout conversion for Apple's Metal Performance Shaders.

Every function returns a new C-contiguous numpy array (or fills ``out=``), bit-identical to
the numpy one-liner its docstring gives. The layout rules are in docs/layouts.md.
"""

import os as _os

from . import (
    _core,
    export,
)
from .engine import get_threads, permute, set_threads
from .images import image_from_slices, image_slices, reshape_gather, reshape_slices
from .layouts import convert
from .mps import (
    MPSLayoutWarning,
    bias,
    conv_transpose_weights,
    conv_weights,
    dense_reshape,
    depthwise_weights,
    expand_depthwise,
    fc_weights,
)
from .quantize import dequantize_weights, quantize_weights
from .rnn import gru_weights, lstm_weights, rnn_weights

__version__ = _core.__version__

# MPSLAYOUT_ISA forces an instruction set (tests use it to run every dispatch path); a value
# this build or CPU cannot honour is an error rather than a silent fallback.
_isa = _os.environ.get("MPSLAYOUT_ISA", "").strip()
if _isa and _isa != "auto" and _isa != _core.isa():
    raise ImportError(
        f"MPSLAYOUT_ISA={_isa!r} is unsupported on this CPU or build; "
        f"available: {', '.join(_core.available_isas())} (or 'auto')"
    )

__all__ = [
    "MPSLayoutWarning",
    "__version__",
    "bias",
    "conv_transpose_weights",
    "conv_weights",
    "convert",
    "dense_reshape",
    "depthwise_weights",
    "dequantize_weights",
    "expand_depthwise",
    "export",
    "fc_weights",
    "get_threads",
    "gru_weights",
    "image_from_slices",
    "image_slices",
    "lstm_weights",
    "permute",
    "quantize_weights",
    "reshape_gather",
    "reshape_slices",
    "rnn_weights",
    "set_threads",
]
