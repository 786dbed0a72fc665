"""Export of Keras ConvLSTM2D as an MPSRNNImageInferenceLayer with an MPSLSTMDescriptor
(docs/layouts.md section 9, "Image RNNs"): one file per gate data source whose bytes equal
the documented index rule written here as plain loops; the MPS cell formula with its
products as centred convolutions (mpslayout.reference.rnn), run from the files, equals
Keras's own output; planted converter bugs (two gates swapped, the kernel rotated 180
degrees, the bias forgotten) break that equality; configurations MPS cannot compute
(padding='valid', even kernels, strides, dilation) are exported with exact: false and the
reason."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_export_rnn import _files, _keras, _validate

from mpslayout import rnn
from mpslayout.export import export
from mpslayout.reference import rnn as ref
from mpslayout.verify.recurrent import run_exported

# MPS property prefix -> gate index k in Keras's packed (kH, kW, I, 4H) kernel (i, f, c, o)
KERAS_GATE = {"inputGate": 0, "forgetGate": 1, "cellGate": 2, "outputGate": 3}
T, SIDE, CHANNELS = 3, 8, 2


def _build(tmp: Path, layers: list[Any], seed: int) -> tuple[Any, np.ndarray, list[np.ndarray]]:
    """A saved (.keras and .h5) Sequential model over (T, 8, 8, 2) images with non-trivial
    biases; returns it, an input batch and each layer's Keras output on it."""
    keras = _keras()
    pytest.importorskip("h5py")
    x = np.random.default_rng(seed).standard_normal((2, T, SIDE, SIDE, CHANNELS))
    x = x.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input((T, SIDE, SIDE, CHANNELS)), *layers])
        for v in model.weights:  # distinct biases per gate, so a lost bias shows
            if "bias" in v.path:
                v.assign(np.linspace(-1, 1, int(np.prod(v.shape)), dtype=np.float32))
        outs, y = [], x
        for layer in model.layers:
            y = keras.ops.convert_to_numpy(layer(y))
            outs.append(y)
        model.save(str(tmp / "m.keras"))
        model.save(str(tmp / "m.h5"))
    return model, x, outs


@pytest.fixture(scope="module")
def exact_model(tmp_path_factory: Any) -> tuple[Path, Any, np.ndarray, list[np.ndarray]]:
    """ConvLSTM2D(4, 3, same), a backward one (go_backwards=True), a Bidirectional one:
    all exact."""
    keras = _keras()
    tmp = tmp_path_factory.mktemp("convlstm")
    cl = keras.layers.ConvLSTM2D
    model, x, outs = _build(tmp, [
        cl(4, 3, padding="same", return_sequences=True),
        cl(3, 3, padding="same", return_sequences=True, go_backwards=True),
        keras.layers.Bidirectional(cl(2, (3, 1), padding="same", return_sequences=True)),
    ], seed=0)
    return tmp, model, x, outs


def _steps(y: np.ndarray) -> np.ndarray:
    """Keras (B, T, height, width, C) -> the reference's (T, B, height, width, C)."""
    return np.swapaxes(y, 0, 1)


def _run(out: Path, entry: dict[str, Any], x: np.ndarray) -> np.ndarray:
    return run_exported(entry, _files(out, entry), _steps(x))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_exported_files_run_as_keras(exact_model: Any, tmp_path: Path, suffix: str) -> None:
    tmp, _, x, (mid, back, both) = exact_model
    doc = export(tmp / f"m{suffix}", tmp_path / "out", progress=False)
    _validate(doc)
    fwd, bwd, b_fwd, b_bwd = doc["layers"]
    for e, hidden, n_in, kernel in ((fwd, 4, CHANNELS, (3, 3)), (bwd, 3, 4, (3, 3)),
                                    (b_fwd, 2, 3, (3, 1)), (b_bwd, 2, 3, (3, 1))):
        rec = e["recurrent"]
        assert (e["kind"], rec["descriptor"], rec["layer"]) == (
            "lstm", "MPSLSTMDescriptor", "MPSRNNImageInferenceLayer")
        assert rec["exact"] is True, e["notes"]
        assert rec["image"]["input_weights"] == {
            "kernelHeight": kernel[0], "kernelWidth": kernel[1],
            "inputFeatureChannels": n_in, "outputFeatureChannels": hidden}
        assert rec["image"]["recurrent_weights"]["inputFeatureChannels"] == hidden
        assert (rec["image"]["padding"], rec["return_sequences"]) == ("same", True)
    assert [e["recurrent"]["layerSequenceDirection"] for e in doc["layers"]] == [
        "forward", "backward", "forward", "backward"]
    out = tmp_path / "out"
    y = _run(out, fwd, x)
    np.testing.assert_allclose(y, _steps(mid), rtol=1e-5, atol=1e-5)
    # go_backwards: Keras lists the outputs in processing order, MPS at their time index
    z = run_exported(bwd, _files(out, bwd), y)
    np.testing.assert_allclose(z[::-1], _steps(back), rtol=1e-5, atol=1e-5)
    # Bidirectional (merge_mode concat): forward channels first, then backward
    z = np.swapaxes(back, 0, 1)
    w = np.concatenate([run_exported(e, _files(out, e), z) for e in (b_fwd, b_bwd)], -1)
    np.testing.assert_allclose(w, _steps(both), rtol=1e-5, atol=1e-5)


def test_gate_files_follow_the_documented_index_rule(exact_model: Any, tmp_path: Path) -> None:
    """``dst[h][y][x][i] = kernel[y][x][i][k*H + h]`` (recurrent kernel alike), bias
    ``b[h] = bias[k*H + h]``, on the input data source only; as plain loops."""
    keras = _keras()
    tmp, model, _, _ = exact_model
    doc = export(tmp / "m.keras", tmp_path / "out", progress=False)
    for layer, entry in zip(model.layers[:2], doc["layers"][:2]):
        kernel, rkernel, bias = (keras.ops.convert_to_numpy(v) for v in layer.weights)
        kh, kw, _, four_h = kernel.shape
        h = four_h // 4
        want: dict[str, np.ndarray] = {}
        for gate, k in KERAS_GATE.items():
            for role, src in (("InputWeights", kernel), ("RecurrentWeights", rkernel)):
                dst = np.zeros((h, kh, kw, src.shape[2]), np.float32)
                for o in range(h):
                    for y in range(kh):
                        for x in range(kw):
                            for i in range(src.shape[2]):
                                dst[o, y, x, i] = src[y, x, i, k * h + o]
                want[gate + role] = dst
            b = np.zeros(h, np.float32)
            for o in range(h):
                b[o] = bias[k * h + o]
            want[gate + "InputWeights.bias"] = b
        got = _files(tmp_path / "out", entry)
        assert sorted(got) == sorted(want)  # no recurrent bias, no memory weights
        for role, a in want.items():
            assert entry["files"][role]["file"] == f"{entry['file_stem']}.{role}.bin"
            assert got[role].tobytes() == a.tobytes(), role


def _rotated(orig: Any) -> Any:
    def block(*args: Any, **kwargs: Any) -> np.ndarray:
        return np.ascontiguousarray(orig(*args, **kwargs)[:, ::-1, ::-1])
    return block


@pytest.mark.parametrize("bug", ["swap_gates", "rotate_180", "no_bias"])
def test_planted_bugs_break_the_match(exact_model: Any, tmp_path: Path, bug: str,
                                      monkeypatch: Any) -> None:
    tmp, _, x, (mid, *_) = exact_model
    if bug == "swap_gates":  # forget and cell gate blocks exchanged
        monkeypatch.setitem(rnn.LSTM_ORDER, "Keras", "icfo")
    elif bug == "rotate_180":  # a transposed-convolution flip applied by mistake
        monkeypatch.setattr(rnn, "_block", _rotated(rnn._block))
    else:
        monkeypatch.setattr(rnn, "_biases", lambda *a: None)
    doc = export(tmp / "m.keras", tmp_path / "out", progress=False)
    y = _run(tmp_path / "out", doc["layers"][0], x)
    assert np.abs(y - _steps(mid)).max() > 1e-2


@pytest.mark.parametrize("bug", [None, "swap_gates"])
def test_verify_judges_convlstm_against_keras(exact_model: Any, tmp_path: Path, bug: Any,
                                              monkeypatch: Any) -> None:
    """``mpslayout verify OUT --model m.keras``: ONNX has no ConvLSTM, so each direction is
    judged by Keras itself; a planted gate swap fails and is named."""
    from mpslayout.verify.keras_oracle import verify_keras

    tmp = exact_model[0]
    if bug:
        monkeypatch.setitem(rnn.LSTM_ORDER, "Keras", "icfo")
    export(tmp / "m.keras", tmp_path / "out", progress=False)
    report = verify_keras(tmp_path / "out", tmp / "m.keras", input=exact_model[2])
    rows = [r for r in report.rows if r.layer]
    assert len(rows) == 4
    assert all(r.error is None and r.isolated is not None for r in rows), report.table()
    if bug:
        assert not report.ok
        assert report.first_divergence is rows[0]
    else:
        assert report.ok, report.table()
        assert report.layers_checked == 4


def test_configurations_mps_cannot_compute_are_flagged(tmp_path: Path, capsys: Any) -> None:
    """padding='valid', an even kernel, strides and dilation: exported, exact: false, the
    reason in the notes and the CLI summary."""
    keras = _keras()
    from mpslayout.cli import main

    cl = keras.layers.ConvLSTM2D
    _, x, outs = _build(tmp_path, [
        cl(4, 3, return_sequences=True),  # padding='valid' (Keras's default): 8x8 -> 6x6
        cl(3, 2, padding="same", return_sequences=True),
        cl(2, 3, padding="same", strides=2, return_sequences=True),
        cl(2, 3, padding="same", dilation_rate=2),
    ], seed=1)
    doc = export(tmp_path / "m.keras", tmp_path / "out", progress=False)
    _validate(doc)
    reasons = ["padding='valid'", "even kernel size [2]", "strides=[2, 2]",
               "dilation_rate=[2, 2]"]
    assert len(doc["layers"]) == 4
    for entry, reason in zip(doc["layers"], reasons):
        assert entry["recurrent"]["exact"] is False
        inexact = [n for n in entry["notes"] if n.startswith("not exact")]
        assert len(inexact) == 1, entry["notes"]
        assert reason in inexact[0]
    assert doc["layers"][3]["recurrent"]["return_sequences"] is False
    # the flag is honest: MPS's same-size state is not Keras's shrunken one. The first
    # step agrees in the interior (the weights are right), later steps do not.
    y = _run(tmp_path / "out", doc["layers"][0], x)[:, :, 1:-1, 1:-1]
    want = _steps(outs[0])
    np.testing.assert_allclose(y[0], want[0], rtol=1e-5, atol=1e-5)
    assert np.abs(y[1:] - want[1:]).max() > 1e-3
    assert main(["export", str(tmp_path / "m.h5"), "-o", str(tmp_path / "o2")]) == 0
    assert "padding='valid'" in capsys.readouterr().out
    # verify against Keras: every layer fails, with the export's reason beside it
    assert main(["verify", str(tmp_path / "out"), "--model", str(tmp_path / "m.keras")]) == 1
    out = capsys.readouterr().out
    assert "not the shape of Keras'" in out
    assert "padding='valid'" in out


@pytest.mark.parametrize("cell", ["lstm", "gru", "single_gate"])
def test_image_rnn_with_1x1_kernels_is_the_matrix_rnn_per_pixel(cell: str) -> None:
    """MPSRNNLayer.h: the image layer "can be often used to implement" the matrix layer
    "by using 1x1-images"; likewise 1x1 kernels apply the matrix layer at every pixel."""
    rng = np.random.default_rng(2)
    h, n = 3, 2
    names = {"lstm": ["inputGate", "forgetGate", "cellGate", "outputGate"],
             "gru": ["inputGate", "recurrentGate", "outputGate"], "single_gate": [""]}[cell]
    gates: dict[str, np.ndarray] = {}
    for g in names:
        w_in, w_rec = (g + "InputWeights", g + "RecurrentWeights") if g else (
            "inputWeights", "recurrentWeights")
        gates[w_in] = rng.standard_normal((h, 1, 1, n))
        gates[w_rec] = rng.standard_normal((h, 1, 1, h))
        gates[w_in + ".bias"] = rng.standard_normal(h)
    x = rng.standard_normal((4, 2, 3, 5, n))
    fn = getattr(ref, cell)
    img = fn(x, gates, h, image=True)[0]
    flat = fn(x.reshape(4, 2 * 3 * 5, n), gates, h)[0]
    np.testing.assert_allclose(img, flat.reshape(4, 2, 3, 5, h), rtol=1e-12, atol=1e-12)


def test_image_reference_rejects_wrong_shapes() -> None:
    gates = {"inputWeights": np.zeros((3, 3, 3, 5))}
    with pytest.raises(ValueError, match="OHWI"):
        ref.single_gate(np.zeros((1, 1, 4, 4, 2)), gates, 3, image=True)
    with pytest.raises(ValueError, match="height, width"):
        ref.single_gate(np.zeros((1, 1, 2)), {}, 3, image=True)
    with pytest.raises(ValueError, match="initial state"):
        ref.single_gate(np.zeros((1, 1, 4, 4, 2)), {}, 3, image=True, h0=np.zeros((1, 3)))
