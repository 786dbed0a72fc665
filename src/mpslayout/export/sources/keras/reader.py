"""Reads a Keras model without TensorFlow: a Keras 3 ``.keras`` archive (config.json and
model.weights.h5 in a zip) or a legacy Keras 2 / tf.keras ``.h5`` file (model_config
attribute and model_weights group), through h5py. The saved config gives what the
weights do not: the Flatten before a Dense and the shape it flattens, a Reshape after a
Dense, each convolution's padding, and which BatchNormalization follows which layer.

Sequential and functional models of Conv2D, Conv2DTranspose, DepthwiseConv2D, Dense and
BatchNormalization are exported; nested models and other weighted layers are listed as
unsupported. Keras semantics: TF "same" padding, Flatten in H, W, C order, Reshape targets
in H, W, C order (channels_last). Needs h5py (``pip install mpslayout[keras]``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ... import geometry as mf
from ...attrs import as_float, as_int
from ...plan import (
    Layer,
    Overrides,
    Plan,
    SkipLayer,
    TensorRef,
    batch_norm_fold,
    const_tensor,
    folded_bias,
    is_float,
)
from ...reshape import reshape_layer
from . import rnn as keras_rnn
from . import spatial
from .file import Source
from .graph import (
    MODELS,
    POINTWISE,
    WEIGHTLESS,
    Node,
    activation,
    conv_pads,
    graph,
    pair,
    shape_hwc,
    transposed_pads,
)

# the order of a layer's variables in a .keras file (vars/0, vars/1, ...), by class
_ROLES = {"LayerNormalization": ["gamma", "beta"], "PReLU": ["alpha"],
          "Normalization": ["mean", "variance", "count"], "Embedding": ["embeddings"],
          "GroupNormalization": ["gamma", "beta"]}


def _input_dims(nodes: list[Node]) -> dict[str, list[int]]:
    """The model's inputs with their NHWC dims (an unknown batch is 1), for verify; none
    when some input has an unknown dim other than the batch."""
    found = {}
    for n in nodes:
        if n.cls == "InputLayer" or (n is nodes[0] and not n.inputs and n.in_shape):
            dims = n.in_shape
            if not isinstance(dims, list) or not dims or not all(
                    isinstance(v, int) and v > 0 for v in dims[1:]):
                return {}
            found[n.name] = [dims[0] if isinstance(dims[0], int) and dims[0] > 0 else 1,
                             *dims[1:]]
    return found


def _unread_reason(n: Node, paths: list[str]) -> str:
    if all("seed_generator" in p for p in paths):
        return f"the state of a random seed generator of {n.cls} (training only)"
    return (f"{len(paths)} variable(s) of this {n.cls} that the exporter does not read "
            "(not in the layer's known weights)")


class _Reader:
    def __init__(self, src: Source, fold_bn: bool, over: Overrides, plan: Plan) -> None:
        self.src, self.fold_bn, self.over, self.plan = src, fold_bn, over, plan
        self.nodes = graph(src.config, plan, over.input_dims)
        self.folded: set[str] = set()

    def vars(self, n: Node) -> dict[str, TensorRef]:
        """A layer's variables by role (kernel, bias, gamma, beta, moving_mean, ...)."""
        found = self.src.datasets(n.name, n.var_path)
        if self.src.zipped:  # .keras: vars/0, vars/1, ... in the layer's build order
            if n.cls == "BatchNormalization":
                roles = ((["gamma"] if n.cfg.get("scale", True) else [])
                         + (["beta"] if n.cfg.get("center", True) else [])
                         + ["moving_mean", "moving_variance"])
            elif n.cls in ("SeparableConv1D", "SeparableConv2D"):
                roles = ["kernel", "pointwise_kernel", "bias"]
            else:
                roles = ["kernel", "bias"]
        else:  # legacy h5: names like conv2d/kernel:0, depthwise_conv2d/depthwise_kernel:0
            roles = [p.rsplit("/", 1)[-1].split(":")[0].replace("depthwise_kernel", "kernel")
                     for p, _, _ in found]
        refs = {}
        for role, (p, shape, dt) in zip(roles, found):
            if not is_float(dt):
                raise SkipLayer(f"variable {p!r} is {dt}, not floating point")
            refs[role] = self.src.ref(p, shape, dt)
        return refs

    def run(self) -> None:
        for n in self.nodes:
            if n.name in self.folded:
                continue
            handler = {"Conv2D": self.conv, "DepthwiseConv2D": self.conv,
                       "Conv2DTranspose": self.transposed, "Dense": self.dense,
                       "BatchNormalization": self.batch_norm, "Conv1D": self.conv1d,
                       "SeparableConv1D": self.separable,
                       "SeparableConv2D": self.separable}.get(n.cls)
            if n.cls in keras_rnn.CLASSES or n.cls == "Bidirectional":
                handler = lambda n: keras_rnn.read_layer(self, n)  # noqa: E731
            if handler is not None:
                try:
                    handler(n)
                except SkipLayer as e:
                    self.plan.skip(n.name, n.cls, str(e))
            elif n.cls in MODELS:
                self.plan.refuse(n.name, n.cls, "a nested model: export it on its own")
            elif n.cls not in WEIGHTLESS:
                self.plan.refuse(n.name, n.cls, "no MPS layer mapping known to mpslayout"
                                 + self.raw_tensors(n))
        self.account()

    def raw_tensors(self, n: Node) -> str:
        """The floating-point variables of a layer MPS has no kernel for, as "tensor"
        layers NAME.ROLE (as they are in the file), for a custom Metal kernel to load;
        returns what to add to the layer's reason."""
        found = self.src.datasets(n.name, n.var_path)
        roles = _ROLES.get(n.cls, []) if self.src.zipped else \
            [p.rsplit("/", 1)[-1].split(":")[0] for p, _, _ in found]
        done = []
        for i, (p, shape, dt) in enumerate(found):
            if not is_float(dt):
                continue
            role = roles[i] if i < len(roles) else f"var{i}"
            name = f"{n.name}.{role}"
            source = {"format": "keras", "layer": n.name, "op": n.cls, "input": None,
                      "output": None}
            layer = Layer(name, "tensor", "tensor", source, self.src.ref(p, shape, dt),
                          geometry={"role": role}, carried=[p])
            layer.notes.append(f"the {role} of a {n.cls}, which has no MPS kernel: "
                               "exported as it is in the file, for a custom kernel")
            self.plan.layers.append(layer)
            done.append(name)
        return f"; its weights are exported as tensors {', '.join(done)}" if done else ""

    def account(self) -> None:
        """Every array in the file is carried by an exported layer (``source.tensors``) or
        listed with the reason: skipped and unsupported layers list theirs, and arrays
        nothing read (a variable the exporter does not know, optimizer state) are listed
        too. A learned tensor can be left out of the export, never out of the manifest."""
        arrays = self.src.arrays()
        claimed = {t for layer in self.plan.layers for t in layer.source_tensors()}
        groups = {n.name: (n, self.src.group(n.name, n.var_path)) for n in self.nodes}
        for entry in self.plan.skipped + self.plan.unsupported:
            if entry["name"] in groups:
                prefix = groups[entry["name"]][1]
                mine = [p for p in arrays if p.startswith(prefix) and p not in claimed]
                if mine:
                    entry["tensors"] = mine
                    claimed.update(mine)
        left = [p for p in arrays if p not in claimed]
        for n, prefix in groups.values():
            mine = [p for p in left if p.startswith(prefix)]
            if mine:
                self.plan.skip(n.name, n.cls, _unread_reason(n, mine), mine)
                claimed.update(mine)
        by_top: dict[str, list[str]] = {}
        for p in left:
            if p not in claimed:
                by_top.setdefault(p.split("/", 1)[0], []).append(p)
        for top, mine in by_top.items():
            training = top in ("optimizer", "optimizer_weights")
            self.plan.training_state.append({
                "name": top, "op": "training state", "tensors": mine,
                "reason": "optimizer state: used in training, not a model weight" if training
                else "arrays outside every layer of the model config"})
            if not training:  # not known to be harmless: a learned tensor may hide here
                self.plan.skip(top, "", self.plan.training_state.pop()["reason"], mine)

    def sole_consumer(self, n: Node) -> Node | None:
        return n.consumers[0] if len(n.consumers) == 1 else None

    def fold(self, n: Node, o: int) -> tuple[Node, np.ndarray | None, np.ndarray | None]:
        """A BatchNormalization right after ``n`` (linear activation, single use): its
        per-channel scale and shift, float64, when folding is on."""
        bn = self.sole_consumer(n)
        if not self.fold_bn or bn is None or bn.cls != "BatchNormalization" or \
                activation(n.cfg) != "linear":
            return n, None, None
        v = self.vars(bn)
        if "moving_mean" not in v or "moving_variance" not in v:
            return n, None, None
        if v["moving_mean"].shape != (o,):
            return n, None, None
        scale, shift = batch_norm_fold(
            v["gamma"].load() if "gamma" in v else np.ones(o),
            v["beta"].load() if "beta" in v else np.zeros(o),
            v["moving_mean"].load(), v["moving_variance"].load(),
            eps=as_float(bn.cfg.get("epsilon", 1e-3), f"layer {bn.name!r}: epsilon"),
            where=f"layer {bn.name!r}")
        self.folded.add(bn.name)
        return bn, scale, shift

    def source(self, n: Node, refs: dict[str, TensorRef], last: Node) -> dict[str, Any]:
        s: dict[str, Any] = {"format": "keras", "layer": n.name, "op": n.cls,
                             "weights": refs["kernel"].name,
                             "bias": refs["bias"].name if "bias" in refs else None,
                             "activation": activation(n.cfg)}
        if last is not n:
            s["folded_batch_norm"] = last.name
        s["output"] = last.name  # the Keras output this layer's result equals
        return s

    def finish(self, layer: Layer, n: Node, last: Node) -> None:
        if last is not n:  # the folded batch norm's tensors are carried too
            layer.carried += [r.name for r in self.vars(last).values()]
        act = layer.source["activation"]
        if act != "linear":
            layer.notes.append(f"fused activation {act!r}: apply it after this layer (an MPS "
                               "neuron)")
        if last is not n:
            layer.notes.append(f"BatchNormalization {last.name!r} folded into the weights "
                               "and bias")
        self.plan.layers.append(layer)

    def conv(self, n: Node) -> None:
        c = n.cfg
        fmt = c.get("data_format", "channels_last")
        refs = self.vars(n)
        if "kernel" not in refs or len(refs["kernel"].shape) != 4:
            raise SkipLayer("no 4-D kernel found")
        kh, kw, a, b = refs["kernel"].shape
        s, d = pair(n, "strides"), pair(n, "dilation_rate")
        hwc = shape_hwc(n.in_shape, fmt)
        size = (None, None) if hwc is None else (hwc[0], hwc[1])
        py = conv_pads(c.get("padding", "valid"), size[0], kh, s[0], d[0])
        px = conv_pads(c.get("padding", "valid"), size[1], kw, s[1], d[1])
        if py is None or px is None:
            raise SkipLayer(f"padding={c.get('padding')!r} with strides {list(s)} needs the input "
                            "size, which the saved config does not give: pass --input-dims "
                            "INPUT=N,H,W,C")
        if n.cls == "DepthwiseConv2D":
            cin, m = a, b
            o, groups = cin * m, cin
        else:
            groups = as_int(c.get("groups", 1), f"layer {n.name!r}: groups", minimum=1)
            cin, o = a * groups, b
        last, scale, shift = self.fold(n, o)
        out_hwc = shape_hwc(n.out_shape, fmt)
        geo = mf.conv_geometry(kh=kh, kw=kw, cin=cin, cout=o, groups=groups, stride=s,
                               dilation=d, pads=(py[0], px[0], py[1], px[1]), in_hw=size,
                               out_hw=(None, None) if out_hwc is None else out_hwc[:2])
        src = self.source(n, refs, last)
        bias = folded_bias(refs.get("bias"), o, n.name, scale, shift)
        if n.cls == "Conv2D":
            w_scale = None if scale is None else scale.reshape(1, 1, 1, o)
            layer = Layer(n.name, "convolution", "conv", src, refs["kernel"], bias,
                          {"layout": "HWIO", "groups": groups}, geo, w_scale)
        else:
            w_scale = None if scale is None else scale.reshape(1, 1, cin, m)
            if m == 1:
                layer = Layer(n.name, "depthwise", "depthwise", src, refs["kernel"], bias,
                              {"layout": "HWCM"}, geo, w_scale)
            else:
                geo["groups"] = 1
                layer = Layer(n.name, "convolution", "expand_depthwise", src, refs["kernel"],
                              bias, {"layout": "HWCM"}, geo, w_scale)
                layer.notes.append(f"depthwise with depth_multiplier {m}: MPS depthwise takes "
                                   "multiplier 1 only, so this is an ordinary convolution "
                                   "whose weights are zero outside each channel")
        self.finish(layer, n, last)

    def conv1d(self, n: Node) -> None:
        spatial.conv1d(self, n)

    def separable(self, n: Node) -> None:
        spatial.separable(self, n)

    def transposed(self, n: Node) -> None:
        c = n.cfg
        fmt = c.get("data_format", "channels_last")
        refs = self.vars(n)
        if "kernel" not in refs or len(refs["kernel"].shape) != 4:
            raise SkipLayer("no 4-D kernel found")
        kh, kw, o, cin = refs["kernel"].shape
        s, d = pair(n, "strides"), pair(n, "dilation_rate")
        op = pair(n, "output_padding", minimum=0) if c.get("output_padding") is not None \
            else (None, None)
        padding = c.get("padding", "valid")
        pt, pb = transposed_pads(padding, kh, s[0], d[0], op[0])
        pl, pr = transposed_pads(padding, kw, s[1], d[1], op[1])
        hwc, out_hwc = shape_hwc(n.in_shape, fmt), shape_hwc(n.out_shape, fmt)
        last, scale, shift = self.fold(n, o)
        geo = mf.transposed_geometry(
            kh=kh, kw=kw, cin=cin, cout=o, groups=1, stride=s, dilation=d,
            pads=(pt, pl, pb, pr), output_padding=(0, 0),
            in_hw=(None, None) if hwc is None else hwc[:2],
            out_hw=(None, None) if out_hwc is None else out_hwc[:2])
        w_scale = None if scale is None else scale.reshape(1, 1, o, 1)
        layer = Layer(n.name, "transposed", "transposed", self.source(n, refs, last),
                      refs["kernel"], folded_bias(refs.get("bias"), o, n.name, scale, shift),
                      {"layout": "HWOI"}, geo, w_scale)
        layer.notes.append(f"Keras padding={padding!r}"
                           + (f", output_padding={list(op)}" if op[0] is not None else "")
                           + " as framework padding (top, left, bottom, right) "
                           f"= {(pt, pl, pb, pr)}")
        self.finish(layer, n, last)

    def flatten_source(self, n: Node) -> tuple[tuple[int, int, int] | None, str]:
        """(H, W, C) flattened into Dense ``n`` and the status plain/image/unknown/pixel."""
        shape = n.in_shape
        if shape is not None and len(shape) == 4:
            return None, "pixel"  # a Dense on every pixel: a 1x1 convolution
        prev = [x for x in self.nodes if x.name in n.inputs]
        while len(prev) == 1 and prev[0].cls in POINTWISE:
            prev = [x for x in self.nodes if x.name in prev[0].inputs]
        if len(prev) == 1 and prev[0].cls == "Flatten":
            hwc = shape_hwc(prev[0].in_shape, prev[0].cfg.get("data_format", "channels_last"))
            if prev[0].in_shape is not None and len(prev[0].in_shape) == 2:
                return None, "plain"
            if hwc is None or not all(isinstance(v, int) for v in hwc):
                return None, "unknown"
            return (int(hwc[0]), int(hwc[1]), int(hwc[2])), "image"
        if shape is not None and len(shape) == 2:
            return None, "plain"
        return None, "unknown" if shape is None else "plain"

    def dense(self, n: Node) -> None:
        refs = self.vars(n)
        if "kernel" not in refs or len(refs["kernel"].shape) != 2:
            raise SkipLayer("no 2-D kernel found")
        k, o = refs["kernel"].shape
        hwc, status = self.flatten_source(n)
        given = self.over.get("input_shapes", [n.name])
        if given is not None:
            hwc, status = (given[1], given[2], given[0]), "image"
        if status == "unknown":
            raise SkipLayer(f"the shape of the image flattened into it is not known; pass "
                        f"--input-shape {n.name}=C,H,W")
        if hwc is not None and math.prod(hwc) != k:
            raise SkipLayer(f"the image flattened into it is (H, W, C)={hwc}, {math.prod(hwc)} "
                        f"values, but its kernel has {k} inputs")
        last, scale, shift = self.fold(n, o)
        src = self.source(n, refs, last)
        bias = folded_bias(refs.get("bias"), o, n.name, scale, shift)
        w_scale = None if scale is None else scale.reshape(1, o)
        params: dict[str, Any] = {"layout": "IO"}
        if status == "pixel":
            h, w = n.in_shape[1], n.in_shape[2]  # type: ignore[index]
            geo = mf.conv_geometry(kh=1, kw=1, cin=k, cout=o, groups=1, stride=(1, 1),
                                   dilation=(1, 1), pads=(0, 0, 0, 0), in_hw=(h, w))
            layer = Layer(n.name, "convolution", "fc", src, refs["kernel"], bias, params, geo,
                          w_scale)
            layer.notes.append("a Dense on every pixel of an image: a 1x1 convolution")
            self.finish(layer, n, last)
            return
        if hwc is not None:
            params.update(input_shape=hwc, flatten="HWC")
        geo = mf.fc_geometry(n_in=k, n_out=o, source=hwc, flatten="HWC")
        reshape = self.over.get("reshapes", [n.name])
        node_name = None
        if reshape is None:
            nxt = self.sole_consumer(last)
            while nxt is not None and nxt.cls in POINTWISE:
                nxt = self.sole_consumer(nxt)
            target = (nxt.cfg.get("target_shape") if nxt is not None and nxt.cls == "Reshape"
                      else None)
            if nxt is not None and target is not None and len(target) == 3 and \
                    math.prod(target) == o:
                reshape = (int(target[0]), int(target[1]), int(target[2]))
                node_name = nxt.name
        elif math.prod(reshape) != o:
            raise ValueError(f"reshapes[{n.name!r}]={reshape} holds {math.prod(reshape)} "
                             f"values but {n.name!r} has {o} outputs")
        if reshape is None:
            layer = Layer(n.name, "fully_connected", "fc", src, refs["kernel"], bias, params,
                          geo, w_scale)
        else:
            layer = reshape_layer(n.name, src, refs["kernel"], bias, params, geo,
                                  reshape, "HWC", node_name, w_scale)
            if node_name is not None:
                src["output"] = node_name
        self.finish(layer, n, last)

    def batch_norm(self, n: Node) -> None:
        refs = self.vars(n)
        if "moving_mean" not in refs or "moving_variance" not in refs:
            raise SkipLayer("no moving_mean/moving_variance found")
        c = math.prod(refs["moving_mean"].shape)
        axis = n.cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        rank = len(n.in_shape) if n.in_shape is not None else None
        if axis not in (-1, 1, 3) or (axis == 1 and rank == 4) or (axis == 3 and rank != 4):
            raise SkipLayer(f"normalizes axis {axis}, not the channels of a channels_last image")
        tensors = {
            "gamma": refs.get("gamma") or const_tensor(f"{n.name}:gamma", np.ones(c, np.float32)),
            "beta": refs.get("beta") or const_tensor(f"{n.name}:beta", np.zeros(c, np.float32)),
            "mean": refs["moving_mean"], "variance": refs["moving_variance"],
        }
        hwc = shape_hwc(n.in_shape, "channels_last")
        h, w = (1, 1) if rank == 2 else ((None, None) if hwc is None else hwc[:2])
        geo = {"input_channels": c, "output_channels": c,
               "epsilon": as_float(n.cfg.get("epsilon", 1e-3), f"layer {n.name!r}: epsilon"),
               "input_shape": mf.image(h, w, c), "output_shape": mf.image(h, w, c)}
        source = {"format": "keras", "layer": n.name, "op": n.cls, "weights": None,
                  "bias": None, "tensors": {k: v.name for k, v in tensors.items()},
                  "output": n.name}
        layer = Layer(n.name, "batch_normalization", "batch_norm", source, geometry=geo,
                      tensors=tensors)
        if self.fold_bn:
            layer.notes.append("not folded: it does not directly follow a single-use layer "
                               "with a linear activation")
        self.plan.layers.append(layer)


def read(path: str, *, fold_bn: bool, overrides: Overrides) -> Plan:
    src = Source(path)
    plan = Plan("keras")
    plan.assumptions.append("Keras semantics: kernels HWIO / HWOI / HWCM, TF 'same' padding, "
                            "Flatten in H, W, C order, Reshape targets in H, W, C order")
    reader = _Reader(src, fold_bn, overrides, plan)
    plan.inputs = _input_dims(reader.nodes)
    try:
        reader.run()
    except OSError as e:
        raise ValueError(f"cannot read the weights of {path} (truncated?): {e}") from None
    return plan
