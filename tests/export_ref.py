"""Reads an export folder back (manifest.json + .bin files) and runs each exported layer in
plain numpy, NHWC, from its MPS description alone: OHWI weights, strides, dilations, groups
and the MPS ``offset`` / ``kernel_offset`` of the manifest (never the framework padding).

A convolution centres the kernel window of output pixel x on input pixel
``x*stride + offset.x`` (``nhwc_ref._tap_gather``); a transposed convolution is the same
convolution, stride 1, over the input with stride-1 zeros inserted, centred at
``x + kernel_offset.x``; a sub-pixel convolution writes conv channel ``(dy*r + dx)*C + c``
to pixel ``(y*r + dy, x*r + dx)``, channel c.  Outputs are float64.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from nhwc_ref import _tap_gather, fc_hwc

_ML_DTYPES = {"float32": np.float32, "float16": np.float16}


def load_export(outdir):
    """(manifest, {layer name: {role: array}}), after checking every file's size and hash."""
    outdir = Path(outdir)
    manifest = json.loads((outdir / "manifest.json").read_text())
    arrays = {}
    for entry in manifest["layers"]:
        arrays[entry["name"]] = {}
        for role, f in entry["files"].items():
            raw = (outdir / f["file"]).read_bytes()
            assert len(raw) == f["bytes"], f
            assert hashlib.sha256(raw).hexdigest() == f["sha256"], f
            dt = np.dtype(_ML_DTYPES[f["dtype"]]).newbyteorder("<")
            arrays[entry["name"]][role] = np.frombuffer(raw, dtype=dt).reshape(f["shape"])
    return manifest, arrays


def mps_conv(x, w, bias, *, stride, offset, dilation, groups, out_hw):
    """MPSCNNConvolution over NHWC ``x`` with OHWI ``w`` (O, kH, kW, I/groups)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n = x.shape[0]
    o, kh, kw, ig = w.shape
    og = o // groups
    ho, wo = out_hw
    out = np.zeros((n, ho, wo, groups, og))
    wg = w.reshape(groups, og, kh, kw, ig)
    for ky in range(kh):
        rows = _tap_gather(x, 1, ho, stride["y"], offset["y"], ky, kh, dilation["y"])
        for kx in range(kw):
            patch = _tap_gather(rows, 2, wo, stride["x"], offset["x"], kx, kw, dilation["x"])
            patch = patch.reshape(n, ho, wo, groups, ig)
            out += np.einsum("nhwgi,goi->nhwgo", patch, wg[:, :, ky, kx, :])
    out = out.reshape(n, ho, wo, o)
    if bias is not None:
        out = out + np.asarray(bias, np.float64)
    return out


def subpixel_shuffle(y, r):
    """MPS sub-pixel order: conv channel (dy*r + dx)*C + c -> pixel (y*r+dy, x*r+dx), c."""
    n, h, w, rrc = y.shape
    c = rrc // (r * r)
    return y.reshape(n, h, w, r, r, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * r, w * r, c)


def run_layer(entry, arrays, x):
    """The output of one exported layer for NHWC input ``x`` (a vector input is (N,1,1,I))."""
    x = np.asarray(x, np.float64)
    kind = entry["kind"]
    a = {k: np.asarray(v, np.float64) for k, v in arrays.items()}
    b = a.get("bias")
    if kind == "arithmetic":  # the constant image from its slices, broadcast where 1
        cs = entry["constant_shape"]
        t = a["constant"]  # (S, H, W, P)
        c = t.transpose(1, 2, 0, 3).reshape(cs["height"], cs["width"], -1)
        c = c[None, ..., :cs["channels"]]
        op = entry["op"]
        if op in ("subtract", "divide") and entry["constant_operand"] == "primary":
            return c - x if op == "subtract" else c / x
        return {"add": np.add, "subtract": np.subtract, "multiply": np.multiply,
                "divide": np.divide}[op](x, c)
    if kind == "batch_normalization":
        return (x - a["mean"]) / np.sqrt(a["variance"] + entry["epsilon"]) * a["gamma"] + a["beta"]
    w = a["weights"]
    if kind == "fully_connected":
        y = fc_hwc(x, w, b)
        reshape = entry.get("reshape")
        if reshape is not None:  # MPSNNReshape of HWC-ordered rows
            s = reshape["shape"]
            return y.reshape(-1, s["height"], s["width"], s["channels"])
        return y[:, None, None, :]
    out = entry["output_shape"]
    if kind == "transposed":
        s = entry["strides"]
        n, h, wd, c = x.shape
        up = np.zeros((n, (h - 1) * s["y"] + 1, (wd - 1) * s["x"] + 1, c))
        up[:, :: s["y"], :: s["x"], :] = x
        return mps_conv(up, w, b, stride={"x": 1, "y": 1}, offset=entry["kernel_offset"],
                        dilation=entry["dilations"], groups=entry["groups"],
                        out_hw=(out["height"], out["width"]))
    groups = entry["groups"]
    if kind == "depthwise":
        w = w[..., None]
        groups = w.shape[0]
    r = entry["subpixel"]["factor"] if kind == "subpixel" else 1
    y = mps_conv(x, w, b, stride=entry["strides"], offset=entry["offset"],
                 dilation=entry["dilations"], groups=groups,
                 out_hw=(out["height"] // r, out["width"] // r))
    return subpixel_shuffle(y, r) if r > 1 else y


def nhwc(a):
    """A framework activation as NHWC: NCHW -> NHWC, (N, K) -> (N, 1, 1, K)."""
    a = np.asarray(a, np.float64)
    if a.ndim == 2:
        return a[:, None, None, :]
    if a.ndim == 4:
        return a.transpose(0, 2, 3, 1)
    raise ValueError(f"cannot read a {a.ndim}-D activation as an image")


POINTWISE = {"Relu": lambda v: np.maximum(v, 0)}


def assert_matches(got, want, dtype):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    if dtype == "float16":
        scale = max(float(np.abs(want).max()), 1e-3)
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2 * scale)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def write_safetensors(path, tensors, metadata=None, codes=None):
    """A .safetensors file written by hand (the format: 8-byte little-endian header length,
    JSON header, data), so the tests need no safetensors package. ``tensors``: name -> array
    (float32/float16/float64/int64, or ml_dtypes.bfloat16). ``codes``: name -> safetensors
    dtype written instead of the array's own (raw uint16 bits as "BF16")."""
    by_dtype = {"float32": "F32", "float16": "F16", "float64": "F64", "int64": "I64",
                "bfloat16": "BF16"}
    codes = codes or {}
    header, offset = {}, 0
    for name, a in tensors.items():
        code = codes.get(name) or by_dtype[a.dtype.name]
        header[name] = {"dtype": code, "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a).tobytes())


def ort_values(model, feeds, names):
    """ONNX Runtime's value of every tensor in ``names`` (graph outputs added as needed),
    plus the feeds themselves."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in sorted(set(names) - have - set(feeds)):
        m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT,
                                                                 None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    values = dict(zip(outs, sess.run(outs, feeds)))
    values.update(feeds)
    return values

