"""`model.init_from`: a stream starts from a P3D checkpoint, ours or one made by `import-weights`."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from streams.checkpoint import file_sha256, make_payload, read_checkpoint, save_checkpoint
from streams.config import ModelConfig, TrainConfig
from streams.errors import StreamsError
from streams.finetune import init_from_checkpoint
from streams.inflate import load_pretrained
from streams.p3d import build_model
from streams.train import train_stream
from streams.transforms import INPUT_CONVENTION
from tests.builders import stream_data

CLASSES = ["up", "down"]

IMPORTED_CLASSES = ["left", "down", "spin", "up", "jump"]  # a "Kinetics" whose classes include the toy's


def imported_checkpoint(path: Path, modality: str = "flow", arch: str = "p3d_tiny",
                        classes: list[str] = IMPORTED_CLASSES, seed: int = 7) -> Path:
    """A checkpoint as `import-weights` writes it (streams.importers.import_weights: the paper's model and
    train configs, step 0, `imported_from`), of a net with random weights and random BN statistics, as
    a trained net has (fresh BNs are 0/1 and would not tell a copy from a fresh start)."""
    torch.manual_seed(seed)
    model = build_model(arch, len(classes), 2 if modality == "flow" else 3)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    payload = make_payload(model, arch=arch, modality=modality, classes=classes,
                           input_convention=INPUT_CONVENTION[modality],
                           model_config=dataclasses.asdict(ModelConfig(arch=arch)),
                           train_config=dataclasses.asdict(TrainConfig()), step=0, epoch=0, metrics={},
                           imported_from={"source": "caffe", "file": "fake.caffemodel", "sha256": "0" * 64})
    save_checkpoint(path, payload)
    return path


def test_the_body_is_copied_and_the_classifier_is_new_when_the_classes_differ(tmp_path):
    ckpt = read_checkpoint(imported_checkpoint(tmp_path / "kinetics.pt", classes=[f"class_{i:03d}" for i in range(5)]))
    torch.manual_seed(0)
    model = build_model("p3d_tiny", 2, in_channels=2)
    fresh_fc = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("fc.")}
    note = init_from_checkpoint(model, "p3d_tiny", ckpt.path, "flow", CLASSES)
    assert "a new classifier (2 of the 2 classes unknown to it, e.g. up, down)" in note
    state = model.state_dict()
    body = [k for k in state if not k.startswith("fc.")]
    assert len(body) > 50 and all(torch.equal(state[k], ckpt.state["model"][k]) for k in body)
    assert all(torch.equal(state[k], fresh_fc[k]) for k in fresh_fc)


def test_a_classifier_that_knows_the_classes_is_kept_in_the_dataset_order(tmp_path):
    ckpt = read_checkpoint(imported_checkpoint(tmp_path / "kinetics.pt"))
    model = build_model("p3d_tiny", 2, in_channels=2)
    note = init_from_checkpoint(model, "p3d_tiny", ckpt.path, "flow", CLASSES)
    assert "its classifier kept (2 of its 5 classes, by name)" in note
    # "up" is row 3 of the checkpoint's classifier, "down" row 1
    assert torch.equal(model.fc.weight, ckpt.state["model"]["fc.weight"][[3, 1]])
    assert torch.equal(model.fc.bias, ckpt.state["model"]["fc.bias"][[3, 1]])


def test_what_does_not_fit_is_named(tmp_path):
    model = build_model("p3d_tiny", 2, in_channels=2)
    rgb = imported_checkpoint(tmp_path / "rgb.pt", modality="rgb")
    with pytest.raises(StreamsError, match=r"init_from: .*rgb\.pt is a rgb stream and cannot start the flow stream"):
        init_from_checkpoint(model, "p3d_tiny", rgb, "flow", CLASSES)
    small = imported_checkpoint(tmp_path / "small.pt", arch="p3d_small")
    with pytest.raises(StreamsError, match=r"small\.pt \(p3d_small\): 'conv1\.weight' has shape \[32, 2, 1, 7, 7\], "
                                           r"p3d_tiny \(model\.arch\) needs \[16, 2, 1, 7, 7\]"):
        init_from_checkpoint(model, "p3d_tiny", small, "flow", CLASSES)
    with pytest.raises(StreamsError, match=r"init_from: .*absent\.pt does not exist"):
        init_from_checkpoint(model, "p3d_tiny", tmp_path / "absent.pt", "flow", CLASSES)
    # a negative BatchNorm variance (an edited file): every output of the start would be NaN
    state = torch.load(rgb, weights_only=True)
    state["model"][next(k for k in state["model"] if k.endswith("running_var"))][0] = -1.0
    del state["checksum"]
    torch.save(state, tmp_path / "negvar.pt")
    with pytest.raises(StreamsError, match=r"init_from: .*negvar\.pt: a BatchNorm running variance is negative"):
        init_from_checkpoint(build_model("p3d_tiny", 2), "p3d_tiny", tmp_path / "negvar.pt", "rgb", CLASSES)
    # a 3-D checkpoint given as a 2-D ImageNet net says where it belongs
    with pytest.raises(StreamsError, match=r"rgb\.pt is a P3D stream checkpoint \(3-D\).*model\.init_from"):
        load_pretrained(build_model("p3d_tiny", 2), rgb)
    torch.save(read_checkpoint(rgb).state["model"], tmp_path / "bare.pt")
    with pytest.raises(StreamsError, match=r"'conv1\.weight' has shape \[16, 3, 1, 7, 7\], a 3-D \(P3D\) net's.*"
                                           r"model\.init_from"):
        load_pretrained(build_model("p3d_tiny", 2), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="init_from: give a 2-D ImageNet net .* not both"):
        ModelConfig(pretrained="a.pth", init_from="b.pt").validate()


def test_fine_tuning_an_imported_checkpoint(toy_store, tmp_path, configs, capsys):
    """The paper's fine-tuning: every weight from the checkpoint, a new classifier for the new classes,
    fc at x10, partial BN (every BN but bn1 frozen, so its statistics stay the checkpoint's)."""
    root, train, val = toy_store
    start = imported_checkpoint(tmp_path / "imported.pt", classes=[f"class_{i:03d}" for i in range(5)])
    model_cfg, train_cfg = configs(epochs=3, lr=0.01, fc_lr_mult=10.0)
    model_cfg = dataclasses.replace(model_cfg, init_from=str(start), partial_bn=True)
    result = train_stream(stream_data(root, train, val, CLASSES), "flow", model_cfg, train_cfg, tmp_path / "run")
    assert f"flow stream: starting from {start} (p3d_tiny, step 0), a new classifier" in capsys.readouterr().out

    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "train"]
    assert len(losses) == 12 and sum(losses[-4:]) < 0.7 * sum(losses[:4])
    tuned, imported = read_checkpoint(result.checkpoint), read_checkpoint(start)
    assert tuned.classes == CLASSES and tuned.state["model"]["fc.weight"].shape == (2, 256)
    frozen = [k for k in imported.state["model"] if ".bn" in k or "downsample.1" in k]
    assert len(frozen) > 30
    assert all(torch.equal(tuned.state["model"][k], imported.state["model"][k]) for k in frozen)
    assert not torch.equal(tuned.state["model"]["conv1.weight"], imported.state["model"]["conv1.weight"])
    assert not torch.equal(tuned.state["model"]["bn1.running_mean"], imported.state["model"]["bn1.running_mean"])

    # Every checkpoint says which weights it started from, by content: the path alone names another
    # model once the file is replaced. A resume carries the record over; it does not hash the file again.
    origin = {"init_from": str(start.resolve()), "sha256": file_sha256(start)}
    assert tuned.state["started_from"] == origin
    steps = sorted((tmp_path / "run").glob("checkpoint_*.pt"))
    assert steps and all(read_checkpoint(p).state["started_from"] == origin for p in steps)
    result.checkpoint.unlink()  # killed before its last.pt: the next run resumes from the last step
    imported_checkpoint(start, classes=["other"])  # and the file it started from was replaced meanwhile
    resumed = train_stream(stream_data(root, train, val, CLASSES), "flow", model_cfg, train_cfg, tmp_path / "run")
    assert read_checkpoint(resumed.checkpoint).state["started_from"] == origin

    # our own checkpoint of the same classes, as the start of another run: its classifier is kept
    again = build_model("p3d_tiny", 2, in_channels=2)
    assert "its classifier kept (2 of its 2 classes" in init_from_checkpoint(again, "p3d_tiny", result.checkpoint,
                                                                              "flow", CLASSES)
    assert torch.equal(again.fc.weight, tuned.state["model"]["fc.weight"])
    swapped = build_model("p3d_tiny", 2, in_channels=2)
    init_from_checkpoint(swapped, "p3d_tiny", result.checkpoint, "flow", CLASSES[::-1])
    assert torch.equal(swapped.fc.bias, tuned.state["model"]["fc.bias"].flip(0))


def test_init_from_takes_a_run_folder_as_eval_does(tmp_path):
    """`model.init_from = <run folder>` said "does not exist" while eval, predict and transfer take a run
    folder for its finished model (last.pt); an unfinished folder says so."""
    run = tmp_path / "run"
    imported_checkpoint(run / "last.pt", classes=CLASSES)
    from_file, from_folder = build_model("p3d_tiny", 2, in_channels=2), build_model("p3d_tiny", 2, in_channels=2)
    init_from_checkpoint(from_file, "p3d_tiny", run / "last.pt", "flow", CLASSES)
    note = init_from_checkpoint(from_folder, "p3d_tiny", run, "flow", CLASSES)
    assert f"starting from {run / 'last.pt'}" in note
    assert all(torch.equal(a, b) for a, b in zip(from_file.state_dict().values(), from_folder.state_dict().values(),
                                                 strict=True))
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "metrics.jsonl").write_text("")  # a run that wrote no checkpoint yet
    with pytest.raises(StreamsError, match=r"model\.init_from: .*unfinished/last\.pt does not exist: training in .* "
                                           r"has not finished"):
        init_from_checkpoint(from_folder, "p3d_tiny", tmp_path / "unfinished", "flow", CLASSES)
    (tmp_path / "videos").mkdir()  # never a run: /tmp, a folder of videos
    with pytest.raises(StreamsError, match=r"model\.init_from: .*videos is a folder but no training run"):
        init_from_checkpoint(from_folder, "p3d_tiny", tmp_path / "videos", "flow", CLASSES)
