"""A slow, exact numpy executor of MPSCNN kernels over MPS's own data layouts.

This package is an *executable restatement of docs/layouts.md*, not a claim about Apple's
hardware numerics. Each kernel takes exactly what the MPS kernel of the same name takes,
in the layouts that document fixes:

- images: the slice layout of an MPSImage (section 5), an array ``(N*S, H, W, P)`` with
  ``S = ceil(C/4)`` slices of ``P = 4`` components (``S = 1, P = C`` when C <= 2), channel
  ``f`` of image ``n`` at slice ``n*S + f//4``, component ``f % 4``, padding channels zero,
  stored as float16 or float32 (:class:`Image`);
- weights as exported: OHWI ``[O][kH][kW][I/g]`` for convolutions, transposed
  convolutions and sub-pixel convolutions (section 1, 3, 6), ``[C][kH][kW]`` for depthwise
  convolutions (section 2), ``[O][H][W][C]`` for fully connected layers (section 4);
  bias float32 (any float array is accepted and read as given);
- MPS geometry. Every 2-D argument is an ``(x, y)`` pair, as MPSOffset and MTLSize are,
  and ``dest_size`` is ``(width, height)``:

  * convolution, depthwise, sub-pixel and pooling: destination pixel ``x`` reads source
    pixels ``x*stride.x + offset.x - (kW/2)*dilation.x + kx*dilation.x`` for
    ``kx = 0 .. kW-1`` (integer ``kW/2``): the window is centred on
    ``x*stride + offset`` and starts ``kW/2`` taps to its left (section 1). So a framework
    padding ``pad_left`` is ``offset.x = (kW/2)*d - pad_left``.
  * transposed convolution: the source is dilated by the stride (``stride - 1`` zeros
    between pixels) and destination pixel ``x`` reads positions
    ``x + kernelOffset.x - (kW/2)*d + kx*d`` of it, with the weights as given (the exporter
    has already rotated them by 180 degrees, section 3). With
    ``kernelOffset.x = kW/2 - kW + 1 + pad_left`` this is exactly a framework transposed
    convolution with padding ``pad_left``.
  * edge mode zero: a convolution tap outside the source reads 0. Pooling ignores taps
    outside the source (max over, or mean of, the taps inside), which is what clamping
    gives for max pooling and what MPSCNNPoolingAverage's ``zeroPadSizeX/Y = 0`` means;
    ``zero_pad_size`` counts that many zero pixels on each side into an average.
  * the destination size is given explicitly, as the destination image fixes it in MPS.

Numerics, as documented here and nowhere else: every kernel converts its operands to
float64, forms its sums in float64 (so the accumulation order does not matter to within
float64 rounding), adds the bias and rounds once to the storage type of the destination
image (float16 or float32, the source image's by default): a float16 image rounds where
MPS stores, between layers. Padding channels of every result are zero, whatever the
kernel (a sigmoid does not write 0.5 into them).

One module per family of MPS kernels (:mod:`.convolution`, :mod:`.neurons`,
:mod:`.arithmetic`, :mod:`.pooling`, :mod:`.resampling`, :mod:`.softmax`,
:mod:`.normalization`, :mod:`.shape`); :mod:`.onnx_ops` is the one table from an ONNX
operator to the MPS kernel that computes it (or the reason none does).

Nothing here calls mpslayout's converters: the slice layout is written out again in
:mod:`mpslayout.reference.image` from the section-5 formula, so that a check built on this
package does not reuse the code it judges.
"""

from __future__ import annotations

from .arithmetic import ARITHMETIC, arithmetic
from .convolution import (
    convolution,
    depthwise_convolution,
    fully_connected,
    subpixel_convolution,
    transposed_convolution,
)
from .image import STORAGE_DTYPES, Image, from_slices, slice_shape, to_slices
from .neurons import NEURONS, neuron
from .normalization import batch_normalization, instance_normalization
from .pooling import pooling
from .resampling import upsampling
from .shape import concatenate, reshape
from .softmax import log_softmax, reduce_channels, softmax

__all__ = [
    "ARITHMETIC",
    "NEURONS",
    "STORAGE_DTYPES",
    "Image",
    "arithmetic",
    "batch_normalization",
    "concatenate",
    "convolution",
    "depthwise_convolution",
    "from_slices",
    "fully_connected",
    "instance_normalization",
    "log_softmax",
    "neuron",
    "pooling",
    "reduce_channels",
    "reshape",
    "slice_shape",
    "softmax",
    "subpixel_convolution",
    "to_slices",
    "transposed_convolution",
    "upsampling",
]
