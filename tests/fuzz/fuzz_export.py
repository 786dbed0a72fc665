"""Fuzz target over ``mpslayout.export`` with mutated model files.

Seeds: the example ONNX model (examples/generator.onnx), a small safetensors state_dict and
a small Keras 2 ``.h5`` file, all made here. Each input picks a seed and mutates it, either
structurally (ONNX: initializer dims, data types and sizes, node attributes and operators;
safetensors: header shapes, dtypes, offsets and the header length; Keras: the model config's
layer settings and weight shapes) or byte by byte (flips, truncation, insertion, runs of
0xFF/0x00, huge little-endian integers), then exports it.

The oracle: the export either succeeds and writes a folder whose manifest lists files of the
stated sizes, or raises ValueError (the documented refusal of a hostile file) and leaves
nothing behind: no output folder, no temporary folder. Anything else (another exception, a
MemoryError from an absurd declared size, a crash, a hang) is a finding.

Run by hand::

    python tests/fuzz/fuzz_export.py -max_total_time=600 [corpus_dir]   # atheris
    python tests/fuzz/fuzz_export.py --random 60                          # seconds
"""

from __future__ import annotations

import io
import json
import os
import random
import resource
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from fuzz_convert import Finding, Picker, fuzz_main

from mpslayout.export import export

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_ONNX = ROOT / "examples" / "generator.onnx"
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")
# libhdf5 loops forever on some byte-mutated files (tests/fuzz/regressions/h5_attr_hang.h5);
# the Keras reader runs it in a child it stops after MPSLAYOUT_HDF5_TIMEOUT seconds, which
# the fuzzer keeps short. MPSLAYOUT_FUZZ_HDF5_BYTES=0 leaves HDF5 bytes alone (faster).
os.environ.setdefault("MPSLAYOUT_HDF5_TIMEOUT", "3")
HDF5_BYTES = os.environ.get("MPSLAYOUT_FUZZ_HDF5_BYTES", "1") == "1"
BIG = [0, 1, 2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, -1, -(2**31)]

try:
    import onnx
except ImportError:  # pragma: no cover - optional reader
    onnx = None
try:
    import h5py
except ImportError:  # pragma: no cover - optional reader
    h5py = None


# ------------------------------------------------------------------------------ seeds


def safetensors_bytes(tensors: dict[str, np.ndarray], header_extra: Any = None) -> bytes:
    codes = {"float32": "F32", "float16": "F16", "float64": "F64", "int64": "I64"}
    header: dict[str, Any] = {}
    offset = 0
    for name, a in tensors.items():
        header[name] = {"dtype": codes[a.dtype.name], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}  # fmt: skip
        offset += a.nbytes
    if header_extra:
        header.update(header_extra)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    body = b"".join(np.ascontiguousarray(a).tobytes() for a in tensors.values())
    return len(raw).to_bytes(8, "little") + raw + body


def _st_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(8).astype(np.float32),
        "fc.weight": rng.standard_normal((10, 32)).astype(np.float32),
        "fc.bias": rng.standard_normal(10).astype(np.float32),
        "up.weight": rng.standard_normal((8, 4, 2, 2)).astype(np.float16),
    }


KERAS_LAYERS = [
    ("Conv2D", {"name": "conv", "filters": 4, "kernel_size": [3, 3], "strides": [1, 1],
                "padding": "same", "activation": "relu", "use_bias": True}, [(3, 3, 3, 4), (4,)]),
    ("Flatten", {"name": "flatten", "data_format": "channels_last"}, []),
    ("Dense", {"name": "fc", "units": 5, "activation": "linear"}, [(100, 5), (5,)]),
]  # fmt: skip


def keras2_bytes(layers: list[tuple[str, dict[str, Any], list[tuple[int, ...]]]]) -> bytes:
    assert h5py is not None
    rng = np.random.default_rng(1)
    config = {"class_name": "Sequential", "config": {"name": "seq", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 5, 5, 3],
                                                "name": "input_1"}}]
        + [{"class_name": c, "config": cfg} for c, cfg, _ in layers]}}  # fmt: skip
    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
        f.attrs["keras_version"] = b"2.15.0"
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = [b"input_1"] + [cfg["name"].encode() for _, cfg, _ in layers]
        mw.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        for cls, cfg, shapes in layers:
            g = mw.create_group(cfg["name"])
            roles = ["kernel", "bias"] if shapes else []
            names = [f"{cfg['name']}/{r}:0" for r in roles]
            g.attrs["weight_names"] = [n.encode() for n in names] or np.array([], dtype="S1")
            for n, shape in zip(names, shapes):
                g.create_dataset(n, data=rng.standard_normal(shape).astype(np.float32))
            del cls
    return bio.getvalue()


def onnx_affine_bytes() -> bytes:
    """Constants in every role the ONNX reader gives them: Conv -> Mul -> Add (folded), a
    Sub with the constant first (arithmetic), a Mul by a per-pixel map, PRelu slopes,
    LayerNormalization scale and bias on a (N, T, C) sequence (tensors); symbolic N/H/W."""
    assert onnx is not None
    h, rng = onnx.helper, np.random.default_rng(2)

    def c(*shape: int) -> np.ndarray:
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)

    nodes = [h.make_node("Conv", ["x", "w"], ["a"], name="conv", pads=[1, 1, 1, 1]),
             h.make_node("Mul", ["a", "s"], ["b"], name="mul"),
             h.make_node("Add", ["b", "t"], ["d"], name="add"),
             h.make_node("PRelu", ["d", "slope"], ["e"], name="prelu"),
             h.make_node("Sub", ["k", "e"], ["f"], name="rsub"),
             h.make_node("Mul", ["f", "map"], ["g"], name="pmul"),
             h.make_node("Reshape", ["g", "shape"], ["q"], name="seq"),
             h.make_node("LayerNormalization", ["q", "ln_s", "ln_b"], ["y"], name="ln")]
    inits = {"w": c(4, 3, 3, 3), "s": c(1, 4, 1, 1), "t": c(4, 1, 1), "slope": c(4, 1, 1),
             "k": c(1, 4, 1, 1), "map": c(1, 4, 4, 4), "shape": np.array([1, 4, 16]),
             "ln_s": c(16), "ln_b": c(16)}
    graph = h.make_graph(
        nodes, "affine", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                   ["N", 3, "H", "W"])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


_SEEDS: dict[str, bytes] = {}
_ONNX_SEEDS: list[bytes] = []


def seeds() -> dict[str, bytes]:
    """format -> seed file bytes (the formats whose reader and seed are available)."""
    if not _SEEDS:
        _SEEDS["safetensors"] = safetensors_bytes(_st_tensors())
        if onnx is not None and EXAMPLE_ONNX.exists():
            _SEEDS["onnx"] = EXAMPLE_ONNX.read_bytes()
            _ONNX_SEEDS.extend([_SEEDS["onnx"], onnx_affine_bytes()])
        if h5py is not None:
            _SEEDS["h5"] = keras2_bytes(KERAS_LAYERS)
    return _SEEDS


# --------------------------------------------------------------------------- mutators


def mutate_bytes(p: Picker, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(p.int(1, 4)):
        if not b:
            b += bytes([p.int(0, 255)])
        kind = p.int(0, 6)
        at = p.int(0, len(b) - 1)
        if kind == 0:  # flip bits
            b[at] ^= 1 << p.int(0, 7)
        elif kind == 1:  # truncate
            del b[p.int(0, len(b)) :]
        elif kind == 2:  # insert
            b[at:at] = bytes(p.int(0, 255) for _ in range(p.int(1, 16)))
        elif kind == 3:  # a run of 0xff or 0x00
            n = p.int(1, 16)
            b[at : at + n] = bytes([p.choice([0, 0xFF])]) * n
        elif kind == 4:  # a huge little-endian integer
            v = p.choice(BIG) & (2**64 - 1)
            b[at : at + 8] = v.to_bytes(8, "little")
        elif kind == 5:  # a small varint-sized change (protobuf lengths, tags)
            b[at] = p.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, 0x08, 0x10, 0x12, 0x1A, 0x22])
        else:  # duplicate a chunk
            n = p.int(1, 64)
            b[at:at] = b[at : at + n]
    return bytes(b)


def mutate_safetensors(p: Picker) -> bytes:
    tensors = _st_tensors()
    header: dict[str, Any] = {}
    offset = 0
    codes = {"float32": "F32", "float16": "F16"}
    for name, a in tensors.items():
        header[name] = {"dtype": codes[a.dtype.name], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}  # fmt: skip
        offset += a.nbytes
    body = b"".join(a.tobytes() for a in tensors.values())
    for _ in range(p.int(1, 3)):
        entry = header[p.choice(list(tensors))]
        kind = p.int(0, 7)
        if kind == 0:
            dims = entry.get("shape")
            if isinstance(dims, list) and dims:
                dims[p.int(0, len(dims) - 1)] = p.choice([*BIG, 3, 1.5, "8", None])
        elif kind == 1:
            entry["shape"] = p.choice([[], [0], [2**31] * 3, [-1, 4], "8,4", [[8]]])
        elif kind == 2:
            entry["dtype"] = p.choice(["F64", "I64", "BF16", "F8_E4M3", "BOOL", "Q4", "", 7])
        elif kind == 3 and len(entry.get("data_offsets") or []) == 2:
            entry["data_offsets"][p.int(0, 1)] = p.choice([*BIG, len(body) + 1, 3])
        elif kind == 4:
            entry["data_offsets"] = p.choice([[], [0], [5, 1], None, "0,4", [0, 2**70]])
        elif kind == 5:
            entry.pop(p.choice(["dtype", "shape", "data_offsets"]), None)
        elif kind == 6:
            header["__metadata__"] = p.choice([{"format": "pt"}, [], "x", {"a": 1}])
        else:
            header[p.choice(["", "../evil", "a" * 300, "conv.weight "])] = dict(entry)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    n = len(raw)
    if p.bool(15):
        n = p.choice([0, 1, n - 1, n + 1, 2**32, 2**63 - 1, 2**64 - 1])
    return n.to_bytes(8, "little") + raw + body[: len(body) - p.choice([0, 0, 0, 1, 4, 100])]


_ONNX_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul", "Flatten", "Reshape", "Relu",
             "BatchNormalization", "Add", "Identity", "Foo", "Sub", "Mul", "Div", "PRelu",
             "LayerNormalization", "InstanceNormalization", "Gather", "LSTM"]  # fmt: skip
# --input-dims the fuzzer passes to ONNX exports: fitting ones, and ones to be refused
_INPUT_DIMS = [{"x": (1, 3, 8, 8)}, {"x": (2, 3, 4, 4)}, {"x": (1, 3, 0, 8)},
               {"x": (1, 3, 8)}, {"nope": (1, 3, 8, 8)}, {"x": (1, 3, 2**40, 8)},
               {"x": (1, 5, 8, 8)}]  # fmt: skip


def mutate_onnx(p: Picker) -> bytes:
    assert onnx is not None
    seeds()
    m = onnx.load_from_string(p.choice(_ONNX_SEEDS))
    g = m.graph
    for _ in range(p.int(1, 3)):
        kind = p.int(0, 7)
        if kind <= 2 and g.initializer:
            t = g.initializer[p.int(0, len(g.initializer) - 1)]
            if kind == 0 and t.dims:
                t.dims[p.int(0, len(t.dims) - 1)] = p.choice([*BIG, 3, 7])
            elif kind == 1:
                t.data_type = p.int(0, 22)
            else:
                t.raw_data = t.raw_data[: p.int(0, len(t.raw_data))]
        elif kind <= 4 and g.node:
            node = g.node[p.int(0, len(g.node) - 1)]
            if kind == 3 and node.attribute:
                a = node.attribute[p.int(0, len(node.attribute) - 1)]
                if a.ints:
                    a.ints[p.int(0, len(a.ints) - 1)] = p.choice([*BIG, 3])
                elif a.type == onnx.AttributeProto.INT:
                    a.i = p.choice([*BIG, 3])
                else:
                    a.f = p.choice([0.0, -1.0, float("nan"), float("inf")])
            else:
                node.op_type = p.choice(_ONNX_OPS)
        elif kind == 5 and g.node:
            node = g.node[p.int(0, len(g.node) - 1)]
            if node.input:
                node.input[p.int(0, len(node.input) - 1)] = p.choice(["", "nothing", "x"])
        elif kind == 6 and g.node:
            del g.node[p.int(0, len(g.node) - 1)]
        else:  # an attribute added where it makes no sense
            node = g.node[p.int(0, len(g.node) - 1)]
            node.attribute.append(
                onnx.helper.make_attribute(p.choice(["group", "axis", "transA", "dilations"]),
                                           p.choice([0, -1, 2**40, [0, 0], [1, 2, 3]]))
            )  # fmt: skip
    return m.SerializeToString()


def mutate_keras(p: Picker) -> bytes:
    layers = json.loads(json.dumps(KERAS_LAYERS))  # deep copy (tuples become lists)
    for _ in range(p.int(1, 2)):
        i = p.int(0, len(layers) - 1)
        _cls, cfg, shapes = layers[i]
        kind = p.int(0, 4)
        if kind == 0:
            key = p.choice(list(cfg))
            cfg[key] = p.choice([0, -1, 2**40, None, "same", [0, 0], [3], "x", 1.5, {}])
        elif kind == 1 and shapes:
            s = list(shapes[p.int(0, len(shapes) - 1)])
            if s:
                s[p.int(0, len(s) - 1)] = p.choice([0, 1, 2, 7])
            shapes[p.int(0, len(shapes) - 1)] = s
        elif kind == 2:
            cls = p.choice(["Conv2D", "Dense", "DepthwiseConv2D", "Conv2DTranspose", "Reshape",
                            "BatchNormalization", "Lambda"])  # fmt: skip
            layers[i] = (cls, cfg, shapes)
        elif kind == 3:
            del layers[i]
        else:
            cfg["name"] = p.choice(["", "../x", "fc", "conv", "a/b", "\x00"])
    try:
        return keras2_bytes([(c, cfg, [tuple(s) for s in shapes]) for c, cfg, shapes in layers])
    except Exception:  # h5py may refuse to write some names: fall back to the seed
        return seeds()["h5"]


# ----------------------------------------------------------------------------- oracle

_EXT = {"onnx": ".onnx", "safetensors": ".safetensors", "h5": ".h5"}
_WORK: list[str] = []


def _workdir() -> Path:
    if not _WORK:
        _WORK.append(tempfile.mkdtemp(prefix="fuzz-export-"))
    return Path(_WORK[0])


# Findings already reported, each with a strict-xfail regression test in
# tests/fuzz/test_fuzz_export.py: (exception, file, function) where it is raised. Remove an
# entry when its bug is fixed, so that the fuzzer watches that spot again.
KNOWN: set[tuple[str, str, str]] = set()  # none open now


def _known(e: BaseException) -> bool:
    import traceback

    frames = [f for f in traceback.extract_tb(e.__traceback__) if "mpslayout" in f.filename]
    if not frames:
        return False
    where = (type(e).__name__, os.path.basename(frames[-1].filename), frames[-1].name)
    return where in KNOWN


def check_one(p: Picker) -> str:
    formats = sorted(seeds())
    fmt = p.choice(formats)
    if fmt == "h5" and len(formats) > 1 and not p.bool(35):
        # each HDF5 file costs a child process (~0.2 s, see keras file._probe): fewer of
        # them leaves time for the others
        fmt = p.choice([f for f in formats if f != "h5"])
    structured = p.bool(60)
    if structured and fmt == "safetensors":
        data = mutate_safetensors(p)
    elif structured and fmt == "onnx":
        data = mutate_onnx(p)
    elif structured and fmt == "h5":
        data = mutate_keras(p)
    else:
        data = seeds()[fmt]
    if (not structured or p.bool(20)) and (fmt != "h5" or HDF5_BYTES):
        data = mutate_bytes(p, data)
    elif not structured:
        data = mutate_keras(p)
        structured = True
    work = _workdir()
    for child in work.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    model = work / f"m{_EXT[fmt]}"
    model.write_bytes(data)
    out = work / "out"
    kw: dict[str, Any] = {"progress": False}
    if p.bool(30):
        kw["dtype"] = "float16"
    if p.bool(20):
        kw["fold_bn"] = True
    if fmt == "safetensors" and p.bool(50):
        kw["input_shapes"] = {"fc": (2, 4, 4)}
    if fmt == "onnx" and p.bool(40):
        kw["input_dims"] = p.choice(_INPUT_DIMS)
    if p.bool(20):
        kw["strict"] = True
    label = f"{fmt}-{'struct' if structured else 'bytes'}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MPSLayoutWarning, numpy's RuntimeWarning
            manifest = export(model, out, **kw)
    except ValueError:
        left = sorted(c.name for c in work.iterdir())
        if left != [model.name]:
            raise Finding(f"{label}: a refused export left {left}") from None
        return label + "-refused"
    except Exception as e:
        if _known(e):
            return label + "-known"
        raise Finding(f"{label}: {type(e).__name__}: {e}") from e
    for entry in manifest["layers"]:
        for f in entry["files"].values():
            path = out / f["file"]
            if not path.is_file() or path.stat().st_size != f["bytes"]:
                raise Finding(f"{label}: manifest lists {f['file']} of {f['bytes']} bytes")
    if not (out / "manifest.json").is_file():
        raise Finding(f"{label}: no manifest.json")
    return label + "-ok"


def limit_memory() -> None:
    """A declared size no file backs must be refused, not allocated: cap the address space
    (not under AddressSanitizer, which reserves terabytes of shadow)."""
    if not SANITIZED:
        cap = 8 << 30
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > cap:
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


if __name__ == "__main__":
    random.seed(0)
    limit_memory()
    fuzz_main(check_one)
