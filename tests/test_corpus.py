"""The shared test corpus (tests/corpus.py) is what it says: every model runs in ONNX
Runtime and gives finite, non-degenerate outputs; torch-built models agree with torch; the
symbolic models really carry dim_params; the learned-tensor count finds what the builders
planted."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import corpus  # noqa: E402


@pytest.mark.parametrize("name", corpus.NAMES)
def test_corpus_model_runs_and_is_not_degenerate(name):
    if name in corpus.TORCH_NAMES:
        pytest.importorskip("torch")
    cm = corpus.build(name)
    sess = ort.InferenceSession(cm.model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    f = corpus.feeds(cm)
    out = sess.run(None, f)[0]
    assert np.isfinite(out).all()
    assert out.std() > 1e-3, "a constant output cannot show a wrong weight"
    if cm.torch_module is not None:
        import torch

        with torch.no_grad():
            want = cm.torch_module(*[torch.from_numpy(v) for v in f.values()]).numpy()
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    for inp in cm.model.graph.input:
        params = [d.dim_param for d in inp.type.tensor_type.shape.dim if d.dim_param]
        assert bool(params) == (inp.name in cm.symbolic), inp.name


def test_build_returns_independent_copies():
    a = corpus.build("conv_affine")
    a.model.graph.node.pop()
    assert len(corpus.build("conv_affine").model.graph.node) == len(a.model.graph.node) + 1
    with pytest.raises(ValueError, match="no corpus model"):
        corpus.build("nope")


def test_learned_tensor_count_finds_the_planted_constants():
    lt = corpus.learned_tensors(corpus.build("conv_affine").model)
    assert {"bn1.scale", "bn1.shift", "c2.div", "c2.sub", "rev.c", "pos.map"} <= set(lt)
    lt = corpus.learned_tensors(corpus.build("hardswish_decomposed").model)
    assert "zero" not in lt  # Clip bounds are not data
    assert "six" not in lt
    assert {"three", "six_d"} <= set(lt)
    lt = corpus.learned_tensors(corpus.build("layernorm_decomposed").model)
    assert "ln.two" not in lt  # Pow's exponent is not data
    assert {"ln.gamma", "ln.beta", "ln.eps", "proj.w"} <= set(lt)
    lt = corpus.learned_tensors(corpus.build("lstm").model)
    assert {"lstm.W", "lstm.R", "lstm.B"} <= set(lt)
