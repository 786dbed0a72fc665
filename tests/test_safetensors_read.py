"""mpslayout.safetensors_io.read, the package's one safetensors reader, which the PyTorch
source (``mpslayout export m.safetensors``) and ``mpslayout.mlx.files.load`` read through.

Valid files (written by the safetensors library, torch's save_file for bfloat16, and our
own writer) read to the library's tensors bit for bit, by both readers. Every malformed
file is refused by all three with a ValueError naming the file (and the tensor); where the
safetensors library is installed, the cases this reader newly refuses (a gap between
tensors, bytes after the last one, a tensor that does not start the data, metadata that is
not str -> str) are refused by the library too. A brief hypothesis fuzz: mutated and
generated files raise nothing but ValueError, and a file the reader accepts is one the
library reads to the same bytes.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from mpslayout import safetensors_io as sio
from mpslayout.export.sources.torch import safetensors as torch_reader
from mpslayout.mlx import files

RNG = np.random.default_rng(5)
ARRAYS = {
    "fc.weight": RNG.standard_normal((4, 3)).astype(np.float32),
    "fc.bias": RNG.standard_normal(4).astype(np.float32),
    "half": RNG.standard_normal((2, 2)).astype(np.float16),
    "double": RNG.standard_normal(3),
    "steps": RNG.integers(-9, 9, 5, dtype=np.int64),
    "mask": RNG.integers(0, 2, 6).astype(bool),
    "bytes": RNG.integers(0, 255, 7, dtype=np.uint8),
    "scalar": np.array(1.5, np.float32),
    "empty": np.zeros((0, 3), np.float32),
}


def _file(header: dict[str, Any], body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + body


def _good() -> tuple[dict[str, Any], bytes]:
    """A valid file's header and data: fc.weight then fc.bias, back to back."""
    w = np.arange(12, dtype=np.float32).tobytes()
    b = np.ones(4, np.float32).tobytes()
    return ({"__metadata__": {"format": "pt"},
             "fc.weight": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]},
             "fc.bias": {"dtype": "F32", "shape": [4], "data_offsets": [48, 64]}}, w + b)


def _edit(fn: Callable[[dict[str, Any]], Any], body_fn: Callable[[bytes], bytes] | None = None
          ) -> bytes:
    header, body = _good()
    fn(header)
    return _file(header, body_fn(body) if body_fn else body)


def _set(tensor: str, key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda h: h[tensor].__setitem__(key, value)


_GOOD = _file(*_good())
_DUP = json.dumps(_good()[0])[:-1] + ', "fc.bias": {"dtype": "F32", "shape": [4], ' \
    '"data_offsets": [48, 64]}}'
# (file bytes, what the message says, whether it names a tensor; whether the safetensors
# library refuses it too, for the cases the readers did not all refuse before)
CASES: dict[str, tuple[bytes, str, str | None, bool | None]] = {
    "shorter than the length": (_GOOD[:5], r"not a safetensors file", None, None),
    "absurd header length": ((1 << 40).to_bytes(8, "little") + _GOOD[8:], r"absurd", None,
                             None),
    "header past the end": (len(_GOOD).to_bytes(8, "little") + _GOOD[8:], r"truncated", None,
                            None),
    "truncated data": (_GOOD[:-5], r"truncated", "fc.bias", None),
    "not JSON": (b"\x04\x00\x00\x00\x00\x00\x00\x00{{{{" + _GOOD[8:], r"not valid JSON",
                 None, None),
    "not UTF-8": (b"\x04\x00\x00\x00\x00\x00\x00\x00\xff\xfe{}", r"not valid JSON", None,
                  None),
    "deeply nested": ((lambda raw: len(raw).to_bytes(8, "little") + raw)(
        b"[" * 100000 + b"]" * 100000), r"not valid JSON", None, None),
    "not an object": (_file([1, 2], b""), r"not a JSON object", None, None),  # type: ignore
    "name given twice": (len(_DUP).to_bytes(8, "little") + _DUP.encode()
                         + _good()[1], r"names 'fc\.bias' twice", None, None),
    "metadata not str": (_edit(lambda h: h["__metadata__"].__setitem__("n", 1)),
                         r"__metadata__ must map strings to strings", None, True),
    "metadata not an object": (_edit(lambda h: h.__setitem__("__metadata__", ["x"])),
                               r"__metadata__ must map strings to strings", None, True),
    "entry not an object": (_edit(lambda h: h.__setitem__("fc.bias", [4])),
                            r"needs exactly dtype, shape and data_offsets", "fc.bias", None),
    "entry with another key": (_edit(_set("fc.bias", "x", 1)),
                               r"needs exactly dtype, shape and data_offsets", "fc.bias", None),
    "unknown dtype": (_edit(_set("fc.bias", "dtype", "Q4")), r"unknown safetensors dtype",
                      "fc.bias", None),
    "dtype not a str": (_edit(_set("fc.bias", "dtype", 4)), r"unknown safetensors dtype",
                        "fc.bias", None),
    "negative dim": (_edit(_set("fc.weight", "shape", [4, -3])), r"non-negative",
                     "fc.weight", None),
    "bool dim": (_edit(_set("fc.bias", "shape", [True, 4])), r"non-negative", "fc.bias",
                 None),
    "float offset": (_edit(_set("fc.bias", "data_offsets", [48.0, 64])), r"non-negative",
                     "fc.bias", None),
    "three offsets": (_edit(_set("fc.bias", "data_offsets", [48, 64, 64])),
                      r"not \[begin, end\]", "fc.bias", None),
    "end before begin": (_edit(_set("fc.bias", "data_offsets", [64, 48])),
                         r"not \[begin, end\]", "fc.bias", None),
    "shape disagrees with bytes": (_edit(_set("fc.weight", "shape", [4, 4])), r"declares",
                                   "fc.weight", None),
    "runs past the file": (_edit(_set("fc.bias", "data_offsets", [56, 72])), r"truncated",
                           "fc.bias", None),
    "overlap": (_edit(_set("fc.bias", "data_offsets", [40, 56]), lambda b: b[:56]),
                r"overlap", "fc.bias", None),
    # newly refused by the PyTorch source (and mlx.files.load): the library refuses them
    "gap between tensors": (_edit(_set("fc.bias", "data_offsets", [52, 68]),
                                  lambda b: b[:48] + b"\0" * 4 + b[48:]), r"gap", "fc.bias",
                            True),
    "first tensor not at 0": (_edit(lambda h: (h["fc.weight"].__setitem__(
        "data_offsets", [8, 56]), h["fc.bias"].__setitem__("data_offsets", [56, 72])),
        lambda b: b"\0" * 8 + b), r"gap", "fc.weight", True),
    "bytes after the last tensor": (_GOOD + b"\0" * 8, r"8 bytes after the last tensor",
                                    None, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_files_are_refused_by_every_reader(case: str, tmp_path: Path) -> None:
    content, says, tensor, library_refuses = CASES[case]
    path = tmp_path / "m.safetensors"
    path.write_bytes(content)
    readers = {"safetensors_io.read": lambda: sio.read(path),
               "read_header": lambda: sio.read_header(path),
               "torch source": lambda: torch_reader.read_header(str(path)),
               "mlx.files.load": lambda: files.load(path)}
    for who, read in readers.items():
        with pytest.raises(ValueError, match=says) as e:
            read()
        assert str(path) in str(e.value), (who, str(e.value))
        if tensor is not None:
            assert repr(tensor) in str(e.value), (who, str(e.value))
    if library_refuses:
        st = pytest.importorskip("safetensors.numpy")
        with pytest.raises(Exception, match=r"(?i)offset|covered|invalid"):
            st.load_file(str(path))


def test_malformed_file_refused_by_export_leaves_nothing(tmp_path: Path) -> None:
    import mpslayout

    path = tmp_path / "m.safetensors"
    path.write_bytes(CASES["gap between tensors"][0])
    with pytest.raises(ValueError, match="gap"):
        mpslayout.export(str(path), str(tmp_path / "out"), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


# ----------------------------------------------------------------- valid files

def _check_against_library(path: Path) -> None:
    """Both readers give the library's tensors: dtype, shape and bytes."""
    st = pytest.importorskip("safetensors.numpy")
    want = st.load_file(str(path))
    got = files.load(path)
    assert list(got) == list(sio.read(path).tensors)
    assert set(got) == set(want)
    refs, unreadable = torch_reader.read_header(str(path))
    assert not unreadable
    for name, w in want.items():
        g = np.asarray(got[name])
        assert g.dtype == w.dtype, name
        assert g.shape == w.shape, name
        assert g.tobytes() == w.tobytes(), name
        t = np.asarray(refs[name].load())
        assert t.shape == w.shape, name
        assert t.tobytes() == w.tobytes(), name


def test_library_files_read_bit_exactly(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "lib.safetensors"
    st.save_file(ARRAYS, str(path), metadata={"k": "v"})
    _check_against_library(path)
    h = sio.read(path)
    assert h.metadata == {"k": "v"}
    header, start = sio.read_header(path)
    assert header == h.raw
    assert start == h.start
    assert header["__metadata__"] == {"k": "v"}


def test_our_writer_read_bit_exactly(tmp_path: Path) -> None:
    path = tmp_path / "ours.safetensors"
    sio.write(path, [(n, sio.dtype_code(a.dtype, n), a.shape, a) for n, a in ARRAYS.items()],
              {"m": "x"})
    _check_against_library(path)


def test_bfloat16_from_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("ml_dtypes")
    st = pytest.importorskip("safetensors.torch")
    path = tmp_path / "bf16.safetensors"
    t = torch.randn(3, 5).to(torch.bfloat16)
    st.save_file({"w": t, "b": torch.zeros(0, dtype=torch.bfloat16)}, str(path))
    bits = t.view(torch.int16).numpy().tobytes()
    assert np.asarray(files.load(path)["w"]).tobytes() == bits
    refs, _ = torch_reader.read_header(str(path))
    assert np.asarray(refs["w"].load()).astype(np.float32).tobytes() == \
        t.float().numpy().tobytes()


def test_empty_file_and_zero_size_tensors(tmp_path: Path) -> None:
    path = tmp_path / "e.safetensors"
    path.write_bytes(_file({}, b""))
    assert sio.read(path).tensors == {}
    assert dict(files.load(path)) == {}
    path.write_bytes(_file({"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
                            "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                            "c": {"dtype": "I8", "shape": [2, 0], "data_offsets": [4, 4]}},
                           b"\0\0\x80?"))
    got = files.load(path)
    assert got["b"].tolist() == [1.0]
    assert got["a"].shape == (0,)
    assert got["c"].shape == (2, 0)


# ------------------------------------------------------------------------ fuzz

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as s  # noqa: E402

_CODES = [*sio.ITEMSIZE, "Q4", "", "f32"]


HAVE_ML_DTYPES = importlib.util.find_spec("ml_dtypes") is not None


def _read_all(path: Path) -> sio.Header | None:
    """Every reader on ``path``: all accept it (the header), or all refuse it with a
    ValueError; nothing else escapes (but mlx.files.load's TypeError for a bfloat16 tensor
    without ml_dtypes installed, which names the package)."""
    outcomes: list[Any] = []
    for read in (lambda: sio.read(path), lambda: torch_reader.read_header(str(path)),
                 lambda: files.load(path)):
        try:
            outcomes.append(read())
        except ValueError as e:
            outcomes.append(e)
        except TypeError as e:
            if HAVE_ML_DTYPES or "ml_dtypes" not in str(e):
                raise
            outcomes.append(e)
    h = outcomes[0]
    if isinstance(outcomes[2], TypeError):
        assert isinstance(h, sio.Header)
        assert any(e.code == "BF16" for e in h.tensors.values())
        return h  # a valid file mlx.files.load cannot hold without ml_dtypes: said
    refused = [isinstance(o, ValueError) for o in outcomes]
    if isinstance(h, sio.Header):
        if any(e.code.startswith("F8") for e in h.tensors.values()):
            return h  # mlx.files.load does not hold float8 in numpy: said, not a crash
    assert len(set(refused)) == 1, outcomes
    return None if refused[0] else h  # type: ignore[return-value]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=s.integers(0, len(_GOOD)), flips=s.lists(
    s.tuples(s.integers(0, len(_GOOD) - 1), s.integers(0, 255)), max_size=4),
    tail=s.binary(max_size=12))
def test_fuzz_mutated_files(tmp_path: Path, cut: int, flips: list[tuple[int, int]],
                            tail: bytes) -> None:
    data = bytearray(_GOOD)
    for at, v in flips:
        data[at] = v
    path = tmp_path / "f.safetensors"
    path.write_bytes(bytes(data[:cut]) + tail)
    h = _read_all(path)
    if h is not None:
        _same_as_library(path, h)


@s.composite
def _files(draw: Any) -> tuple[dict[str, Any], int]:
    """A header with its tensors back to back (valid), then maybe one thing made wrong:
    an offset moved, a shape changed, a dtype code, the data's length, a gap."""
    header: dict[str, Any] = {}
    at = 0
    for name in draw(s.lists(s.sampled_from(["a", "b", "c", "__metadata__"]), max_size=3,
                             unique=True)):
        code = draw(s.sampled_from(list(sio.ITEMSIZE)))
        shape = draw(s.lists(s.integers(0, 3), max_size=3))
        n = int(np.prod(shape)) * sio.ITEMSIZE[code]
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [at, at + n]}
        at += n
    body = at
    names = list(header)
    fault = draw(s.sampled_from(["none", "none", "offset", "shape", "dtype", "body",
                                 "gap"]))
    if names and fault != "none":
        e = header[draw(s.sampled_from(names))]
        if fault == "offset":
            k = draw(s.integers(0, 1))
            e["data_offsets"][k] += draw(s.sampled_from([-2, -1, 1, 4]))
        elif fault == "shape":
            e["shape"] = draw(s.lists(s.integers(-1, 4), max_size=3))
        elif fault == "dtype":
            e["dtype"] = draw(s.sampled_from(_CODES))
        elif fault == "gap":  # it and every tensor after it 4 bytes later
            for later in names[names.index(next(k for k in names if header[k] is e)):]:
                header[later]["data_offsets"] = [v + 4 for v in
                                                 header[later]["data_offsets"]]
            body += 4
    if fault == "body":
        body = max(0, body + draw(s.sampled_from([-3, -1, 1, 8])))
    return header, body


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(f=_files())
def test_fuzz_generated_headers(tmp_path: Path, f: tuple[dict[str, Any], int]) -> None:
    header, body = f
    path = tmp_path / "g.safetensors"
    path.write_bytes(_file(header, bytes(b % 256 for b in range(body))))
    h = _read_all(path)
    if h is not None:
        assert sum(e.nbytes for e in h.tensors.values()) == body
        _same_as_library(path, h)


def _same_as_library(path: Path, h: sio.Header) -> None:
    """A file this reader accepts, the library reads to the same bytes."""
    try:
        from safetensors import safe_open
    except ImportError:
        return
    with safe_open(str(path), "numpy") as f:
        assert set(f.keys()) == set(h.tensors)
        for name, e in h.tensors.items():
            if e.code in ("BF16", "F8_E4M3", "F8_E5M2"):
                continue  # numpy has no such dtype in the library's numpy API
            got = f.get_tensor(name)
            assert got.tobytes() == path.read_bytes()[e.offset:e.offset + e.nbytes], name
            assert tuple(got.shape) == e.shape, name


def test_messages_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dir with space" / "m.safetensors"
    path.parent.mkdir()
    path.write_bytes(CASES["overlap"][0])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        sio.read(path)
