"""mpslayout.safetensors_io.write, the package's one safetensors writer, checked against
independent readers (the safetensors package, mlx.core.load), against the format's own
description (u64 LE header length, JSON padded with spaces, data 8-byte aligned, offsets
back to back), and for leaving nothing behind when writing fails."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mpslayout import safetensors_io as sio

RNG = np.random.default_rng(11)

ARRAYS = {
    "a.f64": RNG.standard_normal((3, 2)),
    "b.f32": RNG.standard_normal((2, 3, 4)).astype(np.float32),
    "c.f16": RNG.standard_normal(5).astype(np.float16),
    "d.i64": RNG.integers(-2**62, 2**62, (2, 2), dtype=np.int64),
    "e.i32": RNG.integers(-2**31, 2**31 - 1, 7, dtype=np.int32),
    "f.i16": RNG.integers(-2**15, 2**15 - 1, (1, 3), dtype=np.int16),
    "g.i8": RNG.integers(-128, 127, 9, dtype=np.int8),
    "h.u64": RNG.integers(0, 2**63, 3, dtype=np.uint64),
    "i.u32": RNG.integers(0, 2**32 - 1, 2, dtype=np.uint32),
    "j.u16": RNG.integers(0, 2**16 - 1, 4, dtype=np.uint16),
    "k.u8": RNG.integers(0, 255, (2, 5), dtype=np.uint8),
    "l.bool": RNG.integers(0, 2, 6).astype(bool),
    "m.scalar": np.array(2.5, np.float32),
    "n.empty": np.zeros((0, 4), np.float32),
    "o.bigendian": RNG.standard_normal((2, 2)).astype(">f4"),
    "p.strided": RNG.standard_normal((4, 6)).astype(np.float32)[::2, ::3],
}
META = {"note": "x", "json": json.dumps({"k": [1, 2]})}


def _entries(arrays, form="array"):
    """(name, code, shape, data) with data as an array, bytes or a producer of either."""
    out = []
    for name, a in arrays.items():
        code = sio.dtype_code(a.dtype, name)
        little = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<")))
        data = {"array": a, "bytes": little.tobytes(),
                "producer": (lambda a=a: a)}[form]
        out.append((name, code, a.shape, data))
    return out


def _write(path, entries, metadata, path_kind):
    """The sequence path (header first) or the streamed one (a generator, and metadata
    given as a function)."""
    if path_kind == "sequence":
        return sio.write(path, list(entries), metadata)
    return sio.write(path, (e for e in entries), lambda: metadata)


@pytest.mark.parametrize("path_kind", ["sequence", "stream"])
@pytest.mark.parametrize("form", ["array", "bytes", "producer"])
def test_safetensors_package_reads_it_bit_exactly(tmp_path, path_kind, form):
    st = pytest.importorskip("safetensors")
    path = tmp_path / "w.safetensors"
    size = _write(path, _entries(ARRAYS, form), META, path_kind)
    assert size == path.stat().st_size
    with st.safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == META
        assert list(f.keys()) == sorted(ARRAYS)
        for name, a in ARRAYS.items():
            got = f.get_tensor(name)
            assert got.shape == a.shape, name
            assert got.dtype == a.dtype.newbyteorder("="), name
            assert got.tobytes() == np.ascontiguousarray(
                a.astype(a.dtype.newbyteorder("<"))).tobytes(), name
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_bfloat16_and_float8_by_torch(tmp_path):
    torch = pytest.importorskip("torch")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    st_torch = pytest.importorskip("safetensors.torch")
    bf = RNG.standard_normal((3, 4)).astype(ml_dtypes.bfloat16)
    f8 = RNG.standard_normal(5).astype(ml_dtypes.float8_e4m3fn)
    path = tmp_path / "bf.safetensors"
    sio.write(path, [("bf", "BF16", bf.shape, bf), ("f8", "F8_E4M3", f8.shape, f8.tobytes())])
    back = st_torch.load_file(str(path))
    assert back["bf"].dtype == torch.bfloat16
    assert back["bf"].view(torch.int16).numpy().tobytes() == bf.tobytes()
    assert back["f8"].dtype == torch.float8_e4m3fn
    assert back["f8"].view(torch.uint8).numpy().tobytes() == f8.tobytes()


@pytest.mark.parametrize("path_kind", ["sequence", "stream"])
def test_mlx_reads_it_bit_exactly(tmp_path, path_kind):
    mx = pytest.importorskip("mlx.core")
    arrays = {k: v for k, v in ARRAYS.items() if v.dtype != np.float64}  # mlx reads no F64
    path = tmp_path / "w.safetensors"
    _write(path, _entries(arrays), META, path_kind)
    got, meta = mx.load(str(path), return_metadata=True)
    assert meta == META
    assert sorted(got) == sorted(arrays)
    for name, a in arrays.items():
        b = np.array(got[name])
        assert b.shape == a.shape, name
        assert b.dtype == a.dtype.newbyteorder("="), name
        assert b.tobytes() == np.ascontiguousarray(
            a.astype(a.dtype.newbyteorder("<"))).tobytes(), name


def _parse_by_the_spec(raw: bytes):
    """The file as the format describes it, read without any library."""
    n = int.from_bytes(raw[:8], "little", signed=False)
    text = raw[8:8 + n]
    assert text[:1] == b"{", "the header must start with {"
    body = text.rstrip(b" ")
    assert len(text) - len(body) < 8, "no more padding than the alignment needs"
    assert body.endswith(b"}")
    header = json.loads(body)
    return n, len(body), header


@pytest.mark.parametrize("path_kind", ["sequence", "stream"])
def test_header_layout_follows_the_spec(tmp_path, path_kind):
    """Names of 1..16 characters move the JSON's length through every residue mod 8: each
    file's data must start 8-byte aligned, the padding being spaces."""
    residues = set()
    for k in range(1, 17):
        arrays = {"t" * k: np.arange(3, dtype=np.float32), "u": np.arange(5, dtype=np.int8)}
        path = tmp_path / f"w{k}.safetensors"
        _write(path, _entries(arrays), {"m": "v"} if k > 8 else None, path_kind)
        raw = path.read_bytes()
        n, body, header = _parse_by_the_spec(raw)
        residues.add(body % 8)
        assert (8 + n) % 8 == 0
        assert header.pop("__metadata__", None) == ({"m": "v"} if k > 8 else None)
        assert list(header) == list(arrays), "the tensors in the order given"
        offset = 0
        for name, a in arrays.items():
            assert header[name] == {"dtype": sio.dtype_code(a.dtype), "shape": list(a.shape),
                                    "data_offsets": [offset, offset + a.nbytes]}
            assert raw[8 + n + offset:8 + n + offset + a.nbytes] == a.tobytes()
            offset += a.nbytes
        assert len(raw) == 8 + n + offset
    assert residues == set(range(8))


class Planted(Exception):
    pass


def _interrupt():
    raise KeyboardInterrupt


def _failing_stream(kind):
    yield "a", "F32", (2,), np.ones(2, np.float32)
    if kind == "iterator":
        raise Planted("iterator")
    if kind == "interrupt":
        yield "b", "F32", (2,), _interrupt
    if kind == "short":
        yield "b", "F32", (3,), b"\0" * 8
    if kind == "dtype":
        yield "b", "F32", (2,), np.ones(2, np.float64)
    if kind == "duplicate":
        yield "a", "F32", (2,), np.ones(2, np.float32)


@pytest.mark.parametrize("existing", [False, True])
@pytest.mark.parametrize(("kind", "error", "match"), [
    ("iterator", Planted, "iterator"),
    ("interrupt", KeyboardInterrupt, None),
    ("short", ValueError, r"tensor 'b': 8 bytes given, .* needs 12"),
    ("dtype", TypeError, r"tensor 'b' is declared F32 but its array has dtype float64"),
    ("duplicate", ValueError, r"tensor name 'a' is given twice"),
    ("metadata", Planted, "metadata"),
])
def test_a_failure_leaves_nothing_behind(tmp_path, kind, error, match, existing):
    path = tmp_path / "w.safetensors"
    if existing:
        path.write_bytes(b"old")

    def metadata():
        if kind == "metadata":
            raise Planted("metadata")
        return {}
    with pytest.raises(error, match=match):
        sio.write(path, _failing_stream(kind), metadata)
    assert os.listdir(tmp_path) == (["w.safetensors"] if existing else [])
    if existing:
        assert path.read_bytes() == b"old"


@pytest.mark.parametrize("kind", ["producer", "interrupt", "shape"])
def test_a_failure_on_the_sequence_path_leaves_nothing_behind(tmp_path, kind):
    def producer():
        raise (KeyboardInterrupt() if kind == "interrupt" else Planted("producer"))
    entries = [("a", "F32", (2,), np.ones(2, np.float32)),
               ("b", "F32", (2,), np.ones(3, np.float32) if kind == "shape" else producer)]
    error = {"producer": Planted, "interrupt": KeyboardInterrupt, "shape": ValueError}[kind]
    with pytest.raises(error):
        sio.write(tmp_path / "w.safetensors", entries, {"m": "v"})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("entries", "metadata", "error", "match"), [
    ([("x", "F33", (1,), b"\0" * 4)], None, ValueError, r"tensor 'x': 'F33' is not"),
    ([("x", "F32", (-1,), b"")], None, ValueError, r"tensor 'x': shape \[-1\]"),
    ([("x", "F32", (1.5,), b"")], None, TypeError, r"tensor 'x': shape must be"),
    ([(3, "F32", (1,), b"\0" * 4)], None, TypeError, "tensor names must be str"),
    ([("__metadata__", "F32", (1,), b"\0" * 4)], None, ValueError, "reserved"),
    ([("x", "F32", (1,))], None, TypeError, r"\(name, dtype code, shape, data\)"),
    ([("x", "F32", (1,), 4.0)], None, TypeError, "data must be bytes"),
    ([], {"k": 1}, TypeError, "metadata maps str to str; got 'k': int"),
])
def test_bad_arguments_are_named(tmp_path, entries, metadata, error, match):
    with pytest.raises(error, match=match):
        sio.write(tmp_path / "w.safetensors", entries, metadata)
    assert os.listdir(tmp_path) == []


def test_an_empty_file_is_valid(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    path = Path(tmp_path / "e.safetensors")
    sio.write(path, [])
    assert st.load_file(str(path)) == {}
    assert len(path.read_bytes()) % 8 == 0
