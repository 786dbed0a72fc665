"""A loaded Keras model as an equivalent ONNX graph in NCHW, so that ``mpslayout verify``
can walk a Keras model like any ONNX model while Keras itself stays the judge.

:func:`keras_as_onnx` translates a Functional or Sequential Keras 3 model (channels_last)
layer by layer: weights become initializers in ONNX layouts (OIHW, ConvTranspose's IOHW,
Gemm's (K, O)), weight nodes are named after their Keras layers, and each Keras layer's
output tensor is named after the layer (``NAME`` for its first call, ``NAME:k`` for call
k), so manifest layers (``source.layer``) and Keras' own intermediate outputs both map
onto the graph. A fused activation is a node of its own after the layer, whose input
(``NAME/preact``) Keras cannot give. Images are NCHW; a Flatten of an image flattens in
C, H, W order and the Dense after it has its rows permuted to match, which is what an
ONNX exporter of the same network writes. A layer with no translation becomes a graph
input, fed from Keras' value (``Translation.untranslated``): nothing after it is lost.
"""

from .base import PREACT, RecurrentValue, Tensor, Translation, Untranslatable
from .translator import keras_as_onnx

__all__ = ["PREACT", "RecurrentValue", "Tensor", "Translation", "Untranslatable", "keras_as_onnx"]
