"""TorchScript and ONNX exports of a stream give the eager model's outputs, at any batch size."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from streams.checkpoint import load_checkpoint
from streams.errors import StreamsError
from streams.export import export_checkpoint, export_torchscript
from tests.builders import checkpoint_with_statistics

CLIP_LEN, CROP = 8, 32


def clips(batch, channels, seed=0):
    return torch.randn(batch, channels, CLIP_LEN, CROP, CROP, generator=torch.Generator().manual_seed(seed)) * 40


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("arch, output", [("p3d_tiny", "logits"), ("p3d_small", "logits"), ("p3d_tiny", "features")])
def test_torchscript_export_matches_eager(tmp_path, arch, output):
    ckpt = checkpoint_with_statistics(tmp_path / "rgb.pt", arch=arch)
    written = export_checkpoint(ckpt, tmp_path / "out", ["torchscript"], output)
    assert [p.name for p in written] == [f"rgb.{output}.pt", f"rgb.{output}.json"]
    model, _ = load_checkpoint(ckpt)
    scripted = torch.jit.load(str(written[0]))
    x = clips(3, 3)  # traced on a batch of 1: the batch axis stays free
    with torch.no_grad():
        expected = model(x) if output == "logits" else model.features(x)
        # float32 through other kernels: within 1e-5 of the largest output, on any CPU and thread count
        torch.testing.assert_close(scripted(x), expected, atol=1e-5 * float(expected.abs().max()), rtol=1e-4)
    assert expected.shape == (3, 3 if output == "logits" else model.feature_dim)
    info = json.loads(written[1].read_text())
    assert info["input_shape"] == ["batch", 3, CLIP_LEN, CROP, CROP]
    assert info["input_convention"] == "BGR 0-255 minus [104, 117, 123]" and info["classes"] == ["a", "b", "c"]


def test_onnx_export_matches_eager_with_a_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    ckpt = checkpoint_with_statistics(tmp_path / "flow.pt", modality="flow")
    written = export_checkpoint(ckpt, tmp_path / "out", ["onnx"])
    assert written[0].name == "flow.logits.onnx"
    session = ort.InferenceSession(str(written[0]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["clips"]
    model, _ = load_checkpoint(ckpt)
    for batch in (1, 4):
        x = clips(batch, 2, seed=batch)
        (got,) = session.run(None, {"clips": x.numpy()})
        with torch.no_grad():
            expected = model(x).numpy()
            np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max(), rtol=1e-4)


def test_export_refuses_bad_requests(tmp_path):
    ckpt = checkpoint_with_statistics(tmp_path / "rgb.pt")
    with pytest.raises(StreamsError, match="formats must be among"):
        export_checkpoint(ckpt, tmp_path / "out", ["tflite"])
    model, _ = load_checkpoint(ckpt)
    with pytest.raises(StreamsError, match="output must be one of"):
        export_torchscript(model, tmp_path / "m.pt", clips(1, 3), output="pool4")
    (tmp_path / "broken.pt").write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(StreamsError, match="broken.pt"):
        export_checkpoint(tmp_path / "broken.pt", tmp_path / "out")


@pytest.mark.parametrize("kwargs, message", [
    (dict(clip_len=0), r"--clip-len must be >= 1 \(or left out for the checkpoint's\), got 0"),
    (dict(clip_len=-2), r"--clip-len must be >= 1 .*got -2"),
    (dict(crop=0), r"--crop must be >= 1 .*got 0"),
    (dict(crop=-5), r"--crop must be >= 1 .*got -5"),
    (dict(crop=1), r"a clip of 8 frames x 1x1 is too small for p3d_tiny \(.*\): give a larger --crop"),
])
def test_export_refuses_a_clip_geometry_the_network_cannot_run(tmp_path, kwargs, message):
    ckpt = checkpoint_with_statistics(tmp_path / "rgb.pt")
    with pytest.raises(StreamsError, match=message) as err:
        export_checkpoint(ckpt, tmp_path / "out", ["torchscript"], **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_export_refuses_an_existing_output_and_a_file_as_out_unless_forced(tmp_path):
    from p3dbase.overwrite import OutputExistsError

    ckpt = checkpoint_with_statistics(tmp_path / "rgb.pt")
    first = export_checkpoint(ckpt, tmp_path / "out", ["torchscript"])
    stamps = [p.stat().st_mtime_ns for p in first]
    with pytest.raises(OutputExistsError, match=r"would overwrite .*rgb.logits.pt, .*rgb.logits.json: pass --force"):
        export_checkpoint(ckpt, tmp_path / "out", ["torchscript"])
    assert [p.stat().st_mtime_ns for p in first] == stamps
    assert export_checkpoint(ckpt, tmp_path / "out", ["torchscript"], force=True) == first
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(StreamsError, match=r"--out .*a_file is a file; --out names the folder"):
        export_checkpoint(ckpt, tmp_path / "a_file", ["torchscript"])


def test_onnx_export_of_the_features_output_matches_pool5(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    ckpt = checkpoint_with_statistics(tmp_path / "rgb.pt")
    written = export_checkpoint(ckpt, tmp_path / "out", ["onnx"], "features")
    assert [p.name for p in written] == ["rgb.features.onnx", "rgb.features.json"]
    session = ort.InferenceSession(str(written[0]), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["features"]
    model, _ = load_checkpoint(ckpt)
    for batch in (1, 3):
        x = clips(batch, 3, seed=10 + batch)
        (got,) = session.run(None, {"clips": x.numpy()})
        with torch.no_grad():
            expected = model.features(x).numpy()
        assert got.shape == (batch, model.feature_dim)
        # float32 through other kernels: within 1e-5 of the largest feature, on any CPU and thread count
        np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max(), rtol=1e-4)


def test_an_export_removes_what_a_killed_export_of_its_files_left(tmp_path):
    """A SIGKILLed export left `.rgb.logits.pt.tmp-HOST-PID-0.pt` (260 MB for P3D-199) beside the finished
    exports of the next run, for ever."""
    import os
    import socket
    import subprocess
    import sys

    from p3dbase.atomic import temp_name

    ckpt = checkpoint_with_statistics(tmp_path / "rgb.pt")
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    live_name = temp_name(out / "rgb.logits.pt", unique=True, keep_suffix=True)  # this process's: alive
    killed = out / live_name.name.replace(f"-{os.getpid()}-", f"-{dead}-")
    assert socket.gethostname() in killed.name and killed != live_name
    killed.write_bytes(b"half an export")
    live_name.write_bytes(b"being written")
    export_checkpoint(ckpt, out, ["torchscript"])
    assert not killed.exists() and live_name.exists()
