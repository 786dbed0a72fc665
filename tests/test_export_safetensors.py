"""Whole-model export from state_dict files (.safetensors, .pt), checked against PyTorch.

A state_dict has no graph, so the exporter converts by rule and the tests pass what the
graph would say (input_shapes, reshapes), then run every exported layer in numpy from
the files (export_ref / nhwc_ref) and compare with the PyTorch module: 1e-5 for float32
weights, 1e-2 relative for float16. Also: the memory bound on a ~400 MB file.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from export_ref import assert_matches, load_export, nhwc, run_layer, write_safetensors
from nhwc_ref import conv2d_nhwc

from mpslayout.export import export

SHAPES = {"fc1": (8, 4, 4)}
RESHAPES = {"fc2": (4, 4, 6), "fc3": (2, 3, 5)}


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def net(torch):
    nn = torch.nn
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.bn1 = nn.BatchNorm2d(8)
            self.fc1 = nn.Linear(8 * 4 * 4, 32)
            self.fc2 = nn.Linear(32, 6 * 4 * 4)  # then view(-1, 6, 4, 4)
            self.fc3 = nn.Linear(32, 5 * 2 * 3)  # then view(-1, 5, 2, 3)
            self.fc4 = nn.Linear(32, 10, bias=False)

    m = Net().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        m.bn1.running_mean.uniform_(-1, 1)
        m.bn1.running_var.uniform_(0.5, 2)
        m.bn1.weight.uniform_(0.5, 1.5)
        m.bn1.bias.uniform_(-1, 1)
    return m


def state_dict_numpy(net):
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def check_against_torch(torch, net, outdir, dtype):
    manifest, arrays = load_export(outdir)
    layers = {e["name"]: e for e in manifest["layers"]}
    assert set(layers) == {"conv1", "bn1", "fc1", "fc2", "fc3", "fc4"}
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    with torch.no_grad():
        c = net.conv1(x)
        got = conv2d_nhwc(nhwc(x), arrays["conv1"]["weights"], arrays["conv1"]["bias"],
                          stride=2, padding=1)  # geometry: not in a state_dict
        assert_matches(got, nhwc(c), dtype)
        assert_matches(run_layer(layers["bn1"], arrays["bn1"], nhwc(c)), nhwc(net.bn1(c)),
                       "float32")
        f = torch.flatten(c, 1)
        v = net.fc1(f)
        assert_matches(run_layer(layers["fc1"], arrays["fc1"], nhwc(c)), nhwc(v), dtype)
        assert_matches(run_layer(layers["fc2"], arrays["fc2"], nhwc(v)),
                       nhwc(net.fc2(v).view(-1, 6, 4, 4)), dtype)
        assert_matches(run_layer(layers["fc3"], arrays["fc3"], nhwc(v)),
                       nhwc(net.fc3(v).view(-1, 5, 2, 3)), dtype)
        assert_matches(run_layer(layers["fc4"], arrays["fc4"], nhwc(v)), nhwc(net.fc4(v)),
                       dtype)
    assert layers["fc2"]["kind"] == "subpixel"
    assert layers["fc3"]["reshape"]["target"] == "rows"
    assert layers["conv1"]["offset"] is None
    assert layers["bn1"]["epsilon"] == 1e-5
    assert any("epsilon" in a for a in manifest["assumptions"])
    return manifest


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_safetensors_by_hand(torch, net, tmp_path, dtype):
    path = tmp_path / "net.safetensors"
    write_safetensors(path, state_dict_numpy(net), metadata={"format": "pt"})
    export(path, tmp_path / "out", dtype=dtype, input_shapes=SHAPES, reshapes=RESHAPES,
           progress=False)
    manifest = check_against_torch(torch, net, tmp_path / "out", dtype)
    assert manifest["source"]["format"] == "safetensors"
    # num_batches_tracked is int64 and silently part of the batch norm module
    assert manifest["skipped"] == []


def test_safetensors_library_file(torch, net, tmp_path):
    st = pytest.importorskip("safetensors.torch")
    path = tmp_path / "net.safetensors"
    st.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    export(path, tmp_path / "out", input_shapes=SHAPES, reshapes=RESHAPES, progress=False)
    check_against_torch(torch, net, tmp_path / "out", "float32")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_pt_state_dict(torch, net, tmp_path, dtype):
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)
    export(path, tmp_path / "out", dtype=dtype, input_shapes=SHAPES, reshapes=RESHAPES,
           progress=False)
    manifest = check_against_torch(torch, net, tmp_path / "out", dtype)
    assert manifest["source"]["format"] == "pytorch"


def test_pt_checkpoint_wrapper(torch, net, tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, path)
    manifest = export(path, tmp_path / "out", input_shapes=SHAPES, reshapes=RESHAPES,
                      progress=False)
    assert any("'state_dict'" in a for a in manifest["assumptions"])


def test_pickled_module_is_refused(torch, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 3), path)
    with pytest.raises(ValueError, match=r"state_dict\(\)"):
        export(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_bfloat16_tensors(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 4, 3, 3)).astype(ml_dtypes.bfloat16)
    lin = rng.standard_normal((6, 10)).astype(ml_dtypes.bfloat16)
    path = tmp_path / "bf16.safetensors"
    write_safetensors(path, {"conv.weight": w, "lin.weight": lin})
    for dtype in ("float32", "float16"):
        out = tmp_path / dtype
        export(path, out, dtype=dtype, progress=False)
        _, arrays = load_export(out)
        want = w.astype(np.float32).transpose(0, 2, 3, 1).astype(dtype)
        np.testing.assert_array_equal(arrays["conv"]["weights"], want)
        np.testing.assert_array_equal(arrays["lin"]["weights"][:, 0, 0, :],
                                      lin.astype(np.float32).astype(dtype))


def test_depthwise_bytes_and_skips(tmp_path):
    """A (C, 1, kH, kW) weight exports as OHWI (C, kH, kW, 1): the same bytes as the
    depthwise layout; tensors that are no layer's weight are listed, not dropped."""
    rng = np.random.default_rng(2)
    dw = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"dw.weight": dw, "ln.weight": np.ones(8, np.float32),
                             "emb.weight3d": np.zeros((2, 2, 2), np.float32),
                             "steps": np.zeros(1, np.int64)})
    manifest = export(path, tmp_path / "out", progress=False)
    _, arrays = load_export(tmp_path / "out")
    assert arrays["dw"]["weights"].tobytes() == dw.tobytes()
    assert [s["name"] for s in manifest["skipped"]] == ["steps"]  # an int: not learned
    tensors = {e["name"]: e for e in manifest["layers"] if e["kind"] == "tensor"}
    assert sorted(tensors) == ["emb.weight3d", "ln.weight"]
    assert tensors["ln.weight"]["role"] == "weight"
    assert tensors["emb.weight3d"]["files"]["tensor"]["shape"] == [2, 2, 2]
    np.testing.assert_array_equal(arrays["ln.weight"]["tensor"], np.ones(8, np.float32))
    export(path, tmp_path / "strict", strict=True, progress=False)  # nothing left behind
    write_safetensors(path, {"dw.weight": dw, "q.weight": np.zeros((2, 2), np.int64)})
    with pytest.raises(ValueError, match=r"strict: 1 learned tensor.*q\.weight"):
        export(path, tmp_path / "strict2", strict=True, progress=False)
    with pytest.raises(ValueError, match="fold_bn needs a graph"):
        export(path, tmp_path / "fold", fold_bn=True, progress=False)
    with pytest.raises(ValueError, match=r"reshapes\['dw'\] name no layer"):
        export(path, tmp_path / "bad", reshapes={"dw": (4, 4, 3)}, progress=False)


# ------------------------------------------------------------------------- big files

BIG = {  # name: shape (float32); ~430 MB in all, largest 128 MiB
    "big.weight": (8192, 4096),
    "conv.weight": (1024, 512, 7, 7),
    "mid.weight": (4096, 4096),
    "mid.bias": (4096,),
    "fc.weight": (3000, 8192),
    "seed.weight": (4 * 4 * 1024, 512),
}


def _write_big(path):
    """A large safetensors file, written in slabs so the test itself stays small."""
    header, offset = {}, 0
    for name, shape in BIG.items():
        n = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        rng = np.random.default_rng(3)
        slab = rng.standard_normal(1 << 22).astype(np.float32)  # 16 MiB, repeated
        for shape in BIG.values():
            left = int(np.prod(shape))
            while left:
                k = min(left, slab.size)
                f.write(slab[:k].tobytes())
                slab = np.roll(slab, 12345)
                left -= k
    return 8 + len(raw)


def test_big_safetensors_peak_memory(tmp_path):
    """Peak RSS of a subprocess exporting ~430 MB stays under 2x the largest tensor plus a
    fixed 300 MB allowance for Python, numpy and mpslayout."""
    path = tmp_path / "big.safetensors"
    start = _write_big(path)
    out = tmp_path / "out"
    largest = max(int(np.prod(s)) * 4 for s in BIG.values())
    script = textwrap.dedent(f"""
        import resource, subprocess, sys
        proc = subprocess.run([sys.executable, "-m", "mpslayout", "export", {str(path)!r},
                               "-o", {str(out)!r}, "--input-shape", "fc=512,4,4",
                               "--reshape", "seed=4,4,1024", "-q"])
        print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=True)
    rc, peak_kib = (int(v) for v in proc.stdout.split())
    assert rc == 0, proc.stderr
    peak = peak_kib * 1024
    bound = 2 * largest + (300 << 20)
    print(f"\npeak RSS {peak / 2**20:.0f} MiB for a {path.stat().st_size / 2**20:.0f} MiB file "
          f"(largest tensor {largest / 2**20:.0f} MiB, bound {bound / 2**20:.0f} MiB)")
    assert peak < bound

    manifest = json.loads((out / "manifest.json").read_text())
    layers = {e["name"]: e for e in manifest["layers"]}
    src = np.memmap(path, dtype="<f4", mode="r")
    offsets = {}
    pos = start // 4
    for name, shape in BIG.items():
        offsets[name] = src[pos:pos + int(np.prod(shape))].reshape(shape)
        pos += int(np.prod(shape))
    # a Linear on a vector: the same bytes, written in several chunks
    big = layers["big"]["files"]["weights"]
    assert big["sha256"] == hashlib.sha256(offsets["big.weight"].tobytes()).hexdigest()
    # chunked OIHW -> OHWI across chunk boundaries
    conv = np.memmap(out / "conv.weights.bin", dtype="<f4", mode="r").reshape(1024, 7, 7, 512)
    for o in (0, 667, 668, 669, 1023):
        np.testing.assert_array_equal(conv[o], offsets["conv.weight"][o].transpose(1, 2, 0))
    fc = np.memmap(out / "fc.weights.bin", dtype="<f4", mode="r").reshape(3000, 4, 4, 512)
    for o in (0, 1364, 2999):
        np.testing.assert_array_equal(
            fc[o], offsets["fc.weight"][o].reshape(512, 4, 4).transpose(1, 2, 0))
    seed = np.memmap(out / "seed.weights.bin", dtype="<f4", mode="r").reshape(16384, 512)
    for n in (0, 1, 1024, 16383):  # n = (y*4 + x)*1024 + c reads row c*16 + y*4 + x
        yx, c = divmod(n, 1024)
        np.testing.assert_array_equal(seed[n], offsets["seed.weight"][c * 16 + yx])


def test_batch_norm_without_affine(torch, tmp_path):
    bn = torch.nn.BatchNorm2d(4, affine=False).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    path = tmp_path / "bn.pt"
    torch.save({f"norm.{k}": v for k, v in bn.state_dict().items()}, path)
    manifest = export(path, tmp_path / "out", progress=False)
    _, arrays = load_export(tmp_path / "out")
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((2, 4, 3, 3)).astype(np.float32))
    with torch.no_grad():
        want = nhwc(bn(x))
    assert_matches(run_layer(manifest["layers"][0], arrays["norm"], nhwc(x)), want, "float32")
    assert manifest["skipped"] == []
