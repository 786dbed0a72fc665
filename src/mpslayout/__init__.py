"""mpslayout: exact, fast tensor layout conversion for Apple's Metal Performance Shaders.

Every function returns a new C-contiguous numpy array (or fills ``out=``), bit-identical to
the numpy one-liner its docstring gives. The layout rules are in MPS_LAYOUTS.md.
"""

from . import _core
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

__version__ = _core.__version__

__all__ = [
    "MPSLayoutWarning",
    "__version__",
    "bias",
    "conv_transpose_weights",
    "conv_weights",
    "convert",
    "dense_reshape",
    "depthwise_weights",
    "expand_depthwise",
    "fc_weights",
    "get_threads",
    "image_from_slices",
    "image_slices",
    "permute",
    "reshape_gather",
    "reshape_slices",
    "set_threads",
]
