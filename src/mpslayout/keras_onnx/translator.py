"""The walk over a Keras functional graph: each layer call becomes ONNX nodes (or, with no
translation, a graph input fed from Keras), then the ONNX model."""

from __future__ import annotations

from typing import Any

from .base import OPSET, Tensor, Translation, Untranslatable, _dims, _is_layer
from .convolutions import ConvolutionLayers
from .pointwise import PointwiseLayers
from .recurrent import RecurrentLayers
from .spatial import SpatialLayers
from .weighted import WeightedLayers


class Translator(WeightedLayers, ConvolutionLayers, PointwiseLayers, SpatialLayers,
                 RecurrentLayers):
    """Every layer translation (``t_CLASS`` methods of the mixins) and the walk."""

    def run(self) -> Translation:
        from onnx import TensorProto, helper

        model = self.model
        graph = getattr(model, "_functional", None) or model
        if not hasattr(graph, "_nodes_by_depth"):
            raise Untranslatable("the model has no graph of layers (a subclassed model, or a "
                                 "Sequential model built without an input shape)")
        for kt in graph.inputs:
            self.graph_input(kt, kt._keras_history[0].name)
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            for node in graph._nodes_by_depth[depth]:
                if node.operation is not None and not node.is_input:
                    self.layer_call(node.operation, node)
        outputs = [helper.make_tensor_value_info(self.values[id(kt)].name, TensorProto.FLOAT,
                                                 _dims(self.values[id(kt)]))
                   for kt in graph.outputs]
        ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims)
               for n, dims in self.input_dims]
        g = helper.make_graph(self.b.nodes, f"{model.name}_nchw", ins, outputs, self.b.inits)
        self.out.model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                                           producer_name="mpslayout.keras_onnx")
        self.out.model.ir_version = min(self.out.model.ir_version, 8)
        return self.out

    def graph_input(self, kt: Any, base: str) -> None:
        shape = tuple(kt.shape)
        name = self.b.unique(base)
        layout = "nchw" if len(shape) == 4 else "keras"
        t = Tensor(name, shape, layout)
        self.values[id(kt)] = t
        self.out.tensors[name] = (kt, t)
        self.out.inputs.append(name)
        self.input_dims.append((name, _dims(t)))

    def layer_call(self, op: Any, node: Any) -> None:
        idx = self.calls[id(op)] = self.calls.get(id(op), -1) + 1  # calls in this graph
        name = self.b.unique(op.name if idx == 0 else f"{op.name}:{idx}")
        ins = [self.values[id(kt)] for kt in node.input_tensors if id(kt) in self.values]
        outs = list(node.output_tensors)
        cls = type(op).__name__
        self.node = node
        try:
            if len(outs) != 1:
                why = [f"{k}={v!r}" for k, v in (("return_state", True), ("merge_mode", None))
                       if hasattr(op, k) and getattr(op, k) == v]
                raise Untranslatable(f"{len(outs)} outputs" + (f" ({', '.join(why)})"
                                                               if why else ""))
            if _is_layer(op):
                fn = getattr(self, "t_" + cls, None)
                if fn is None:
                    raise Untranslatable(f"no ONNX translation of {cls}")
                t = fn(op, ins, tuple(outs[0].shape), name)
            else:  # a keras.ops call in a functional graph (x + 3, x * (1/6), ...)
                t = self.keras_op(cls, node, tuple(outs[0].shape), name)
        except Untranslatable as e:  # Keras' value of it becomes an input of the graph
            self.out.untranslated.append({"name": op.name, "op": cls, "reason": str(e)})
            for k, kt in enumerate(outs):
                self.graph_input(kt, name if k == 0 else f"{name}/{k}")
            return
        self.values[id(outs[0])] = t
        self.out.tensors[t.name] = (outs[0], t)

def keras_as_onnx(model: Any) -> Translation:
    """The ONNX translation of a Keras model (module docstring); needs onnx.

    Raises :class:`Untranslatable` for a model with no layer graph; single layers without
    a translation are listed in ``Translation.untranslated`` and fed from Keras.
    """
    return Translator(model).run()
