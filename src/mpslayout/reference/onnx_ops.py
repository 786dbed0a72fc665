"""The one table from an ONNX operator to the MPS kernel that computes it.

:data:`TABLE` maps an ONNX op type to a builder. A builder reads the node (attributes,
constant operands, shapes) and returns a :class:`Kernel`: the MPS kernel's name, which of
the node's inputs are images, how to run it on reference images, and how far its result
can move when its inputs move (for the tolerance). A node MPS cannot compute as it is
raises :class:`NotExpressible` with the reason. Graphs are ONNX graphs with NCHW
semantics; a Keras model is translated to one before it gets here.

The builders live by family: :mod:`.onnx_pointwise` (neurons, arithmetic),
:mod:`.onnx_windows` (pooling, resampling), :mod:`.onnx_channels` (softmax, reductions,
concatenation, instance normalization).
"""

from __future__ import annotations

from collections.abc import Callable

from . import onnx_channels, onnx_pointwise, onnx_windows
from .onnx_kernel import Kernel, NodeView, NotExpressible
from .onnx_pointwise import arithmetic_kernel, broadcast_strides, constant_image

__all__ = ["TABLE", "Kernel", "NodeView", "NotExpressible", "arithmetic_kernel",
           "broadcast_strides", "build", "constant_image"]

TABLE: dict[str, Callable[[NodeView], Kernel]] = {
    **onnx_pointwise.BUILDERS, **onnx_windows.BUILDERS, **onnx_channels.BUILDERS}


def build(node: NodeView) -> Kernel | None:
    """The MPS kernel for ``node``; None when MPSCNN has none; raises
    :class:`NotExpressible` when it has one but not for this node's form."""
    builder = TABLE.get(node.op)
    return None if builder is None else builder(node)
