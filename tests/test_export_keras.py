"""Whole-model export from Keras files, checked against PyTorch running Keras semantics.

Keras is not needed: the tests write a Keras 3 ``.keras`` archive and a Keras 2 ``.h5``
file by hand (h5py), in the layouts Keras itself saves. The reference runs each layer in
PyTorch the way Keras/TensorFlow define it: HWIO kernels, TF "same" padding, and
Conv2DTranspose as the gradient of the forward convolution (TensorFlow's definition), so
the transposed padding is not restated from the exporter. Exported layers are run in
numpy from the manifest (export_ref) and compared to 1e-5 / 1e-2 relative.
"""

from __future__ import annotations

import io
import json
import math
import zipfile

import numpy as np
import pytest
from export_ref import assert_matches, load_export, run_layer

h5py = pytest.importorskip("h5py")
torch = pytest.importorskip("torch")
F = torch.nn.functional

from mpslayout.export import export  # noqa: E402

N, H, W, C = 2, 9, 9, 3


def layers_spec(conv_activation="relu"):
    """(class, config, input shape, weights) of a Sequential model, channels_last."""
    rng = np.random.default_rng(0)

    def r(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return [
        ("Conv2D", {"name": "conv", "filters": 8, "kernel_size": [3, 3], "strides": [2, 2],
                    "padding": "same", "activation": conv_activation, "use_bias": True},
         [None, 9, 9, 3], [r(3, 3, 3, 8), r(8)]),
        ("BatchNormalization", {"name": "bn", "axis": -1, "epsilon": 1e-3, "center": True,
                                "scale": True},
         [None, 5, 5, 8], [r(8) + 1, r(8), r(8), np.abs(r(8)) + 0.5]),
        ("DepthwiseConv2D", {"name": "dw", "kernel_size": [3, 3], "strides": [1, 1],
                             "padding": "same", "depth_multiplier": 1, "activation": "linear"},
         [None, 5, 5, 8], [r(3, 3, 8, 1), r(8)]),
        ("DepthwiseConv2D", {"name": "dw2", "kernel_size": [3, 3], "strides": [1, 1],
                             "padding": "valid", "depth_multiplier": 2,
                             "activation": "linear"},
         [None, 5, 5, 8], [r(3, 3, 8, 2), r(16)]),
        ("Conv2DTranspose", {"name": "up", "filters": 4, "kernel_size": [3, 3],
                             "strides": [2, 2], "padding": "same", "output_padding": None,
                             "activation": "linear"},
         [None, 3, 3, 16], [r(3, 3, 4, 16), r(4)]),
        ("Conv2DTranspose", {"name": "up2", "filters": 4, "kernel_size": [4, 4],
                             "strides": [2, 2], "padding": "valid", "output_padding": [1, 1],
                             "activation": "linear"},
         [None, 6, 6, 4], [r(4, 4, 4, 4), r(4)]),
        ("Flatten", {"name": "flatten", "data_format": "channels_last"}, [None, 15, 15, 4], []),
        ("Dense", {"name": "fc", "units": 16, "activation": "linear"}, [None, 900],
         [r(900, 16, scale=0.05), r(16)]),
        ("Dense", {"name": "seed", "units": 96, "activation": "linear"}, [None, 16],
         [r(16, 96), r(96)]),
        ("Reshape", {"name": "reshape", "target_shape": [4, 4, 6]}, [None, 96], []),
        ("Conv2D", {"name": "out", "filters": 2, "kernel_size": [2, 2], "strides": [1, 1],
                    "padding": "same", "activation": "linear"}, [None, 4, 4, 6],
         [r(2, 2, 6, 2), r(2)]),
        ("Dense", {"name": "pix", "units": 3, "activation": "linear"}, [None, 4, 4, 2],
         [r(2, 3), r(3)]),
    ]


def _snake(cls):
    return {"Conv2D": "conv2d", "BatchNormalization": "batch_normalization",
            "DepthwiseConv2D": "depthwise_conv2d", "Conv2DTranspose": "conv2d_transpose",
            "Flatten": "flatten", "Dense": "dense", "Reshape": "reshape"}[cls]


def write_keras3(path, spec):
    layers = [{"module": "keras.layers", "class_name": "InputLayer",
               "config": {"batch_shape": [None, H, W, C], "dtype": "float32",
                          "name": "input_layer"}, "registered_name": None}]
    for cls, cfg, shape, _ in spec:
        layers.append({"module": "keras.layers", "class_name": cls,
                       "config": {**cfg, "trainable": True, "data_format": "channels_last"}
                       if cls != "Reshape" else cfg,
                       "registered_name": None, "build_config": {"input_shape": shape}})
    config = {"module": "keras", "class_name": "Sequential", "registered_name": None,
              "config": {"name": "sequential", "layers": layers},
              "build_config": {"input_shape": [None, H, W, C]}}
    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        f.create_group("vars")
        used = {}
        for cls, _, _, weights in spec:
            base = _snake(cls)
            name = base if base not in used else f"{base}_{used[base] + 1}"
            used[base] = used.get(base, -1) + 1
            g = f.create_group(f"layers/{name}").create_group("vars")
            for i, a in enumerate(weights):
                g[str(i)] = a
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.8.0"}))
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("model.weights.h5", bio.getvalue())


_ROLES = {"Conv2D": ["kernel", "bias"], "Dense": ["kernel", "bias"],
          "Conv2DTranspose": ["kernel", "bias"],
          "DepthwiseConv2D": ["depthwise_kernel", "bias"],
          "BatchNormalization": ["gamma", "beta", "moving_mean", "moving_variance"]}


def write_keras2(path, spec):
    layers = [{"class_name": "InputLayer",
               "config": {"batch_input_shape": [None, H, W, C], "name": "input_1"}}]
    layers += [{"class_name": cls, "config": cfg} for cls, cfg, _, _ in spec]
    config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}}
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
        f.attrs["keras_version"] = b"2.15.0"
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = [b"input_1"] + [cfg["name"].encode() for _, cfg, _, _ in spec]
        mw.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        for cls, cfg, _, weights in spec:
            g = mw.create_group(cfg["name"])
            names = [f"{cfg['name']}/{role}:0" for role in _ROLES.get(cls, [])]
            g.attrs["weight_names"] = [n.encode() for n in names] or np.array([], dtype="S1")
            for n, a in zip(names, weights):
                g.create_dataset(n, data=a)


# ------------------------------------------------------------------------- Keras semantics


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def nchw(x):
    return t(np.asarray(x).transpose(0, 3, 1, 2))


def to_nhwc(y):
    return y.detach().numpy().transpose(0, 2, 3, 1)


def tf_same(size, k, s, d=1):
    eff = (k - 1) * d + 1
    total = max((math.ceil(size / s) - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


def k_conv(x, kernel, bias, strides, padding, groups=1):
    """Keras Conv2D / DepthwiseConv2D (kernel already OIHW), NHWC in and out."""
    xt = nchw(x)
    kh, kw = kernel.shape[2:]
    if padding == "same":
        (pt, pb), (pl, pr) = tf_same(xt.shape[2], kh, strides[0]), tf_same(xt.shape[3], kw,
                                                                         strides[1])
        xt = F.pad(xt, (pl, pr, pt, pb))
    return to_nhwc(F.conv2d(xt, t(kernel), t(bias), stride=strides, groups=groups))


def k_conv_transpose(x, kernel, bias, strides, padding, output_padding):
    """TensorFlow's conv2d_transpose: the gradient of conv2d (kernel HWOI = its HWIO filter
    run from O to I channels) with respect to its input of the Keras output size."""
    kh, kw, o, _ = kernel.shape
    n, h, w, _ = x.shape
    size = []
    for i, (k, s, sz) in enumerate(((kh, strides[0], h), (kw, strides[1], w))):
        op = None if output_padding is None else output_padding[i]
        if padding == "same":
            size.append(sz * s if op is None else (sz - 1) * s + k % 2 + op)
        else:
            size.append((sz - 1) * s + k + (max(k, s) - k if op is None else op))
    z = torch.zeros((n, o, size[0], size[1]), dtype=torch.float64, requires_grad=True)
    fwd = k_conv(z.detach().numpy().transpose(0, 2, 3, 1), kernel.transpose(3, 2, 0, 1),
                 np.zeros(kernel.shape[3]), strides, padding)
    assert fwd.shape[1:3] == (h, w)
    zt = z
    if padding == "same":
        (pt, pb), (pl, pr) = tf_same(size[0], kh, strides[0]), tf_same(size[1], kw, strides[1])
        zt = F.pad(z, (pl, pr, pt, pb))
    y = F.conv2d(zt, t(kernel.transpose(3, 2, 0, 1)), stride=strides)
    (grad,) = torch.autograd.grad(y, z, nchw(x))
    return to_nhwc(grad) + bias


def keras_forward(spec, x):
    """Every layer's (input, output) in NHWC, the Keras way; pre-activation outputs."""
    acts = {}
    for cls, cfg, _, wts in spec:
        name = cfg["name"]
        if cls == "Conv2D":
            y = k_conv(x, wts[0].transpose(3, 2, 0, 1), wts[1], cfg["strides"], cfg["padding"])
            acts[name] = (x, y)
            x = np.maximum(y, 0) if cfg["activation"] == "relu" else y
            continue
        if cls == "BatchNormalization":
            g, b, m, v = wts
            y = (x - m) / np.sqrt(v + cfg["epsilon"]) * g + b
        elif cls == "DepthwiseConv2D":
            kh, kw, c, m = wts[0].shape
            oihw = wts[0].transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw)
            y = k_conv(x, oihw, wts[1], cfg["strides"], cfg["padding"], groups=c)
        elif cls == "Conv2DTranspose":
            y = k_conv_transpose(x, wts[0], wts[1], cfg["strides"], cfg["padding"],
                                 cfg["output_padding"])
        elif cls == "Flatten":
            y = x.reshape(x.shape[0], -1)
        elif cls == "Dense":
            y = x @ wts[0] + wts[1]
        elif cls == "Reshape":
            y = x.reshape(x.shape[0], *cfg["target_shape"])
        acts[name] = (x, y)
        x = y
    return acts


def image(a):
    a = np.asarray(a)
    return a[:, None, None, :] if a.ndim == 2 else a


def check(outdir, spec, dtype, folded=()):
    manifest, arrays = load_export(outdir)
    x = np.random.default_rng(1).standard_normal((N, H, W, C))
    acts = keras_forward(spec, x)
    layers = {e["name"]: e for e in manifest["layers"]}
    for name, entry in layers.items():
        xin, want = acts[name]
        if entry["source"].get("folded_batch_norm"):
            want = acts[entry["source"]["folded_batch_norm"]][1]
        if name == "fc":
            xin = acts["flatten"][0]
        if name == "seed":
            want = acts["reshape"][1]
        got = run_layer(entry, arrays[name], image(xin))
        try:
            assert_matches(got, image(want), dtype if entry["kind"] != "batch_normalization"
                           else "float32")
        except AssertionError as e:
            raise AssertionError(f"layer {name} ({entry['kind']}): {e}") from None
    return manifest


EXPECTED = {"conv": "convolution", "bn": "batch_normalization", "dw": "depthwise",
            "dw2": "convolution", "up": "transposed", "up2": "transposed",
            "fc": "fully_connected", "seed": "subpixel", "out": "convolution",
            "pix": "convolution"}


@pytest.mark.parametrize("fmt", ["keras3", "keras2"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_keras_model(tmp_path, fmt, dtype):
    spec = layers_spec()
    path = tmp_path / ("m.keras" if fmt == "keras3" else "m.h5")
    (write_keras3 if fmt == "keras3" else write_keras2)(path, spec)
    manifest = export(path, tmp_path / "out", dtype=dtype, progress=False)
    assert {e["name"]: e["kind"] for e in manifest["layers"]} == EXPECTED
    check(tmp_path / "out", spec, dtype)
    layers = {e["name"]: e for e in manifest["layers"]}
    assert layers["conv"]["source"]["activation"] == "relu"
    assert layers["fc"]["fully_connected"]["flatten_order"] == "HWC"
    assert layers["seed"]["reshape"]["source_order"] == "HWC"
    assert layers["up"]["output_shape"] == {"height": 6, "width": 6, "channels": 4}
    assert layers["up2"]["output_shape"] == {"height": 15, "width": 15, "channels": 4}
    assert manifest["unsupported"] == []
    assert manifest["skipped"] == []


def test_keras2_shapes_are_propagated_like_keras3_records_them(tmp_path):
    spec = layers_spec()
    write_keras3(tmp_path / "m.keras", spec)
    write_keras2(tmp_path / "m.h5", spec)
    a = export(tmp_path / "m.keras", tmp_path / "a", progress=False)
    b = export(tmp_path / "m.h5", tmp_path / "b", progress=False)

    def geometry(m):
        return [{k: v for k, v in e.items() if k != "source"} for e in m["layers"]]

    assert geometry(a) == geometry(b)


def test_keras_fold_bn(tmp_path):
    spec = layers_spec(conv_activation="linear")
    write_keras3(tmp_path / "m.keras", spec)
    manifest = export(tmp_path / "m.keras", tmp_path / "out", fold_bn=True, progress=False)
    layers = {e["name"]: e for e in manifest["layers"]}
    assert "bn" not in layers
    assert layers["conv"]["source"]["folded_batch_norm"] == "bn"
    check(tmp_path / "out", spec, "float32")


def test_keras_relu_conv_keeps_its_batch_norm(tmp_path):
    write_keras3(tmp_path / "m.keras", layers_spec())
    manifest = export(tmp_path / "m.keras", tmp_path / "out", fold_bn=True, progress=False)
    bn = {e["name"]: e for e in manifest["layers"]}["bn"]
    assert "not folded" in bn["notes"][0]


def test_keras_unsupported_and_broken(tmp_path):
    spec = layers_spec()
    spec.insert(3, ("LayerNormalization", {"name": "ln"}, [None, 5, 5, 8], []))
    write_keras3(tmp_path / "m.keras", [s for s in spec if s[0] != "LayerNormalization"])
    write_keras2(tmp_path / "m.h5", [s for s in spec if s[0] != "LayerNormalization"])
    # an unknown layer class is listed by name (written into the Keras 2 config only)
    with h5py.File(tmp_path / "m.h5", "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        cfg["config"]["layers"].insert(4, {"class_name": "LayerNormalization",
                                           "config": {"name": "ln"}})
        f.attrs["model_config"] = json.dumps(cfg).encode()
    manifest = export(tmp_path / "m.h5", tmp_path / "out", progress=False)
    assert manifest["unsupported"] == [{"name": "ln", "op": "LayerNormalization",
                                        "reason": "no MPS layer mapping known to mpslayout"}]
    data = (tmp_path / "m.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.keras"):
        export(tmp_path / "cut.keras", tmp_path / "cut", progress=False)
    data = (tmp_path / "m.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.h5"):
        export(tmp_path / "cut.h5", tmp_path / "cut", progress=False)
    with h5py.File(tmp_path / "weights.h5", "w") as f:
        f.create_group("layers")
    with pytest.raises(ValueError, match="no model_config"):
        export(tmp_path / "weights.h5", tmp_path / "cut", progress=False)
    assert not (tmp_path / "cut").exists()


def _recompress_h5(src, dst):
    """Copy of an HDF5 file whose non-scalar datasets are chunked and gzip compressed."""
    with h5py.File(src, "r") as s, h5py.File(dst, "w") as d:
        d.attrs.update(s.attrs)

        def copy(name, obj):
            if isinstance(obj, h5py.Dataset):
                kw = {"compression": "gzip", "chunks": True} if obj.ndim and obj.size else {}
                d.create_dataset(name, data=obj[()], **kw).attrs.update(obj.attrs)
            else:
                d.require_group(name).attrs.update(obj.attrs)

        s.visititems(copy)


@pytest.mark.parametrize("fmt", ["keras3", "keras2"])
def test_keras_compressed_storage_exports_the_same(tmp_path, fmt):
    """Weights are memory-mapped when stored plainly; deflated zips and chunked, compressed
    datasets go through libhdf5 instead, with the same result."""
    spec = layers_spec()
    if fmt == "keras3":
        plain, packed = tmp_path / "m.keras", tmp_path / "z.keras"
        write_keras3(plain, spec)
        with zipfile.ZipFile(plain) as s, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as d:
            for n in s.namelist():
                d.writestr(n, s.read(n))
    else:
        plain, packed = tmp_path / "m.h5", tmp_path / "z.h5"
        write_keras2(plain, spec)
        _recompress_h5(plain, packed)
        with h5py.File(packed, "r") as f:
            assert any(d.compression == "gzip" for d in _datasets(f))
    a = export(plain, tmp_path / "a", progress=False)
    b = export(packed, tmp_path / "b", progress=False)
    assert [e["name"] for e in a["layers"]] == [e["name"] for e in b["layers"]]
    for f in sorted((tmp_path / "a").glob("*.bin")):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name
    check(tmp_path / "b", spec, "float32")


def _datasets(f):
    found = []
    f.visititems(lambda _, o: found.append(o) if isinstance(o, h5py.Dataset) else None)
    return found


def test_keras_h5_without_a_child_interpreter(tmp_path, monkeypatch):
    """Where no interpreter can be started (embedded Python), the structure is read in-process."""
    from mpslayout.export.sources.keras import file as keras_file

    spec = layers_spec()
    write_keras2(tmp_path / "m.h5", spec)
    monkeypatch.setattr(keras_file.sys, "executable", str(tmp_path / "no-such-python"))
    manifest = export(tmp_path / "m.h5", tmp_path / "out", progress=False)
    assert {e["name"]: e["kind"] for e in manifest["layers"]} == EXPECTED
    check(tmp_path / "out", spec, "float32")


def test_keras_saved_model_lists_what_it_does_not_export(tmp_path):
    """A model saved by Keras after training: optimizer slots are training state, a
    LayerNormalization's weights are "tensor" layers, a nested model's weights are listed
    with the reason, and strict fails naming those (and only those)."""
    from keras_corpus import keras

    L = keras.layers
    inp = keras.Input((8, 8, 3), name="x")
    y = L.Conv2D(4, 3, padding="same", name="conv")(inp)
    y = L.LayerNormalization(name="ln")(y)
    y = L.Dropout(0.2, name="drop")(y)
    y = keras.Sequential([L.Conv2D(4, 1, name="inner_conv")], name="inner")(y)
    y = L.Dense(5, name="fc")(L.Flatten(name="flat")(y))
    m = keras.Model(inp, y)
    m.compile("adam", "mse")
    m.fit(np.zeros((2, 8, 8, 3)), np.zeros((2, 5)), verbose=0)
    m.save(tmp_path / "m.keras")
    doc = export(tmp_path / "m.keras", tmp_path / "out", progress=False)
    kinds = {e["name"]: e["kind"] for e in doc["layers"]}
    assert kinds == {"conv": "convolution", "ln.gamma": "tensor", "ln.beta": "tensor",
                     "fc": "fully_connected"}
    assert [(e["name"], e["op"]) for e in doc["unsupported"]] == [
        ("ln", "LayerNormalization"), ("inner", "Sequential")]
    assert "tensors" not in doc["unsupported"][0]  # carried by ln.gamma and ln.beta
    assert len(doc["unsupported"][1]["tensors"]) == 2
    [state] = doc["training_state"]
    assert state["name"] == "optimizer"
    assert len(state["tensors"]) == len(m.optimizer.variables)
    assert doc["inputs"] == {"x": [1, 8, 8, 3]}
    with pytest.raises(ValueError, match=r"strict: 2 learned tensor\(s\).*inner") as e:
        export(tmp_path / "m.keras", tmp_path / "strict", strict=True, progress=False)
    assert "optimizer" not in str(e.value)
