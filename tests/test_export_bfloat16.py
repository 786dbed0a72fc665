"""bfloat16 without ml_dtypes: the engine widens raw bfloat16 bits to float32, and a
safetensors export of bfloat16 weights gives the same bytes with and without ml_dtypes.

The reference is the definition of bfloat16 (the top half of a float32):
``(bits.astype(np.uint32) << 16).view(np.float32)``, and ml_dtypes where it is installed.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
from export_ref import load_export, write_safetensors

from mpslayout.engine import bfloat16_bits_to_float32
from mpslayout.export import export

ALL_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)  # NaNs, infs, subnormals


def widened(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def same_bits(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype
    assert a.shape == b.shape
    u = np.dtype(f"u{a.dtype.itemsize}")
    assert np.array_equal(a.view(u), b.view(u))


def test_every_bit_pattern() -> None:
    same_bits(bfloat16_bits_to_float32(ALL_BITS), widened(ALL_BITS))


def test_layouts_of_the_bits() -> None:
    grid = ALL_BITS.reshape(256, 256)
    same_bits(bfloat16_bits_to_float32(grid.T), widened(grid.T))  # strided
    same_bits(bfloat16_bits_to_float32(grid[::3, 1::2]), widened(grid[::3, 1::2]))
    swapped = grid.astype(">u2")  # same values, big-endian storage
    same_bits(bfloat16_bits_to_float32(swapped), widened(grid))
    assert bfloat16_bits_to_float32(np.zeros((0, 4), np.uint16)).shape == (0, 4)


def test_refuses_other_dtypes() -> None:
    with pytest.raises(TypeError, match="uint16"):
        bfloat16_bits_to_float32(np.zeros(3, np.int16))
    with pytest.raises(TypeError, match="uint16"):
        bfloat16_bits_to_float32(np.zeros(3, np.float32))


def test_matches_ml_dtypes() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    same_bits(bfloat16_bits_to_float32(ALL_BITS),
              ALL_BITS.view(ml_dtypes.bfloat16).astype(np.float32))


def bf16_model(path) -> dict[str, np.ndarray]:
    """A conv and a linear layer with bfloat16 weights: random values plus every special
    (NaN payloads of both signs, infinities, subnormals, signed zeros), as raw bits."""
    rng = np.random.default_rng(5)
    conv = rng.standard_normal((8, 4, 3, 3)).astype(np.float32).view(np.uint32) >> 16
    conv = conv.astype(np.uint16)
    special = np.array([0x7FC1, 0xFFC1, 0x7F81, 0x7F80, 0xFF80, 0x0001, 0x8001, 0x0000,
                        0x8000, 0x7F7F], np.uint16)
    conv.reshape(-1)[: special.size] = special
    lin = rng.integers(0, 1 << 16, (6, 10)).astype(np.uint16)  # every kind of value
    tensors = {"conv.weight": conv, "conv.bias": np.arange(8, dtype=np.float32),
               "lin.weight": lin}
    write_safetensors(path, tensors, codes={"conv.weight": "BF16", "lin.weight": "BF16"})
    return tensors


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_export_without_ml_dtypes(tmp_path, monkeypatch, dtype) -> None:
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # `import ml_dtypes` fails
    t = bf16_model(tmp_path / "m.safetensors")
    export(tmp_path / "m.safetensors", tmp_path / "out", dtype=dtype, progress=False)
    _, arrays = load_export(tmp_path / "out")
    with np.errstate(all="ignore"):
        conv = widened(t["conv.weight"]).transpose(0, 2, 3, 1).astype(dtype)
        lin = widened(t["lin.weight"]).astype(dtype)
    same_bits(arrays["conv"]["weights"], conv)
    same_bits(arrays["lin"]["weights"][:, 0, 0, :], lin)
    same_bits(arrays["conv"]["bias"], t["conv.bias"])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_same_files_with_and_without_ml_dtypes(tmp_path, monkeypatch, dtype) -> None:
    pytest.importorskip("ml_dtypes")
    bf16_model(tmp_path / "m.safetensors")
    with warnings.catch_warnings():
        # with ml_dtypes, bfloat16 -> float16 goes through numpy's astype, which warns when
        # a value overflows float16 (the engine's cast, without it, gives the same inf)
        warnings.simplefilter("ignore", RuntimeWarning)
        export(tmp_path / "m.safetensors", tmp_path / "with", dtype=dtype, progress=False)
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    export(tmp_path / "m.safetensors", tmp_path / "without", dtype=dtype, progress=False)
    files = sorted(p.name for p in (tmp_path / "with").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "without").iterdir())
    for name in files:
        assert (tmp_path / "with" / name).read_bytes() == (tmp_path / "without" / name
                                                            ).read_bytes(), name


def bf16_onnx(path, raw: bool) -> dict[str, np.ndarray]:
    """The same conv as an ONNX model whose weight is a BFLOAT16 initializer, stored as
    raw_data or as bit patterns in int32_data (both forms occur in exporters' files)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    t = bf16_model(path.with_suffix(".safetensors"))
    bits = t["conv.weight"]
    w = TensorProto(name="conv.weight", data_type=TensorProto.BFLOAT16, dims=list(bits.shape))
    if raw:
        w.raw_data = bits.astype("<u2").tobytes()
    else:
        w.int32_data.extend(int(v) for v in bits.reshape(-1))
    b = helper.make_tensor("conv.bias", TensorProto.FLOAT, [8], t["conv.bias"].tolist())
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["y"], name="conv",
                          pads=[1, 1, 1, 1])],
        "bf16", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])],
        initializer=[w, b])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return t


def bf16_torch(path) -> dict[str, np.ndarray]:
    torch = pytest.importorskip("torch")
    t = bf16_model(path.with_suffix(".safetensors"))
    sd = {"conv.weight": torch.from_numpy(t["conv.weight"].view(np.int16).copy())
          .view(torch.bfloat16),
          "conv.bias": torch.from_numpy(t["conv.bias"].copy())}
    torch.save(sd, path)
    return t


@pytest.mark.parametrize("source", ["onnx-raw", "onnx-int32", "pytorch"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_onnx_and_pytorch_without_ml_dtypes(tmp_path, monkeypatch, source, dtype) -> None:
    path = tmp_path / ("m.pt" if source == "pytorch" else "m.onnx")
    t = bf16_torch(path) if source == "pytorch" else bf16_onnx(path, source == "onnx-raw")
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # `import ml_dtypes` fails
    export(path, tmp_path / "out", dtype=dtype, progress=False)
    _, arrays = load_export(tmp_path / "out")
    with np.errstate(all="ignore"):
        conv = widened(t["conv.weight"]).transpose(0, 2, 3, 1).astype(dtype)
    same_bits(arrays["conv"]["weights"], conv)
    same_bits(arrays["conv"]["bias"], t["conv.bias"])
