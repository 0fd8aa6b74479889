"""Importing published P3D weights: official Caffe .caffemodel files and pseudo-3d-pytorch checkpoints.

Real weights cannot be downloaded here, so the tests write both formats from randomly initialised
nets with the official names and shapes, written independently of the importers' own mapping (Caffe
names spelled as in the official deploy prototxts; a re-implementation of the port's p3d_model.py),
and check that the imports reproduce the logits.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from streams.checkpoint import load_checkpoint
from streams.errors import StreamsError
from streams.importers import caffe as caffe_import
from streams.importers import detect_source, import_weights, read_classes
from streams.importers import pseudo3d_pytorch as port_import
from streams.p3d import ARCHS, P3DSpec, block_kinds, build_model
from tests.builders import official_block, official_layers, randomise, write_caffemodel

SMALL_INPUT = (2, 3, 8, 48, 48)


# --- Caffe -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_rgb():
    torch.manual_seed(0)
    return randomise(build_model("p3d_small", 5, 3))


@pytest.fixture(scope="module")
def clip():
    return torch.randn(*SMALL_INPUT, generator=torch.Generator().manual_seed(1)) * 50


@pytest.mark.parametrize("numbered, v1, legacy", [((3, 4), False, False), ((), False, False),
                                                  ((3, 4), True, True)],
                         ids=["resnet152-names", "letter-names", "v1-layers-legacy-shapes"])
def test_caffe_import_reproduces_logits(tmp_path, small_rgb, clip, numbered, v1, legacy):
    path = write_caffemodel(tmp_path / "p3d.caffemodel", official_layers(small_rgb, numbered), v1, legacy)
    arch, model = caffe_import.load_caffe(path)
    assert arch == "p3d_small" and model.fc.out_features == 5 and model.in_channels == 3
    assert not model.training
    with torch.no_grad():
        expected, got = small_rgb(clip), model(clip)
    assert expected.abs().mean() > 0.1  # logits of order 1, so the tolerance below means something
    torch.testing.assert_close(got, expected, atol=1e-5 * float(expected.abs().max()), rtol=1e-4)
    for key, value in small_rgb.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("arch", ["p3d63", "p3d131", "p3d199", "p3d_small", "p3d_tiny"])
def test_caffe_mapping_covers_every_tensor_with_official_names(arch):
    with torch.device("meta"):
        model = build_model(arch, 400, 3)
    spec: P3DSpec = ARCHS[arch]
    numbered = {3, 4} if arch in ("p3d131", "p3d199") else set()
    mapping = caffe_import.caffe_mapping(model, numbered, "fc_kinetics")
    keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert sorted(mapping) == sorted(keys)
    expected = {name for name, _ in official_layers_names(spec, numbered)}
    assert {layer for layer, _ in mapping.values()} == expected
    # Every (layer, blob) is used once: no two of our tensors read the same blob.
    assert len(set(mapping.values())) == len(mapping)


def official_layers_names(spec: P3DSpec, numbered):
    names = [("conv1", 1), ("bn_conv1", 4), ("fc_kinetics", 2)]
    for stage, depth in zip(range(2, 6), spec.depths, strict=True):
        for i in range(depth):
            block = f"{stage}{official_block(stage, i, stage in numbered)}"
            branches = ["branch2a", "branch2b"] + (["branch2b_t"] if stage < 5 else []) + ["branch2c"]
            branches += ["branch1"] if i == 0 else []
            names += [(f"{p}{block}_{b}", 1) for b in branches for p in ("res", "bn")]
    return names


def test_p3d199_caffe_names_match_the_official_prototxt():
    with torch.device("meta"):
        model = build_model("p3d199", 400, 2)
    layers = {layer for layer, _ in caffe_import.caffe_mapping(model, {3, 4}, "fc_kinetics").values()}
    # Names read in prototxt/deploy_p3d_resnet_kinetics{,_flow}.prototxt.
    for name in ("conv1", "bn_conv1", "res2a_branch1", "bn2a_branch1", "res2c_branch2b_t", "res3a_branch2a",
                 "res3b1_branch2b_t", "bn3b7_branch2c", "res4a_branch1", "res4b32_branch2b", "res4b35_branch2b_t",
                 "bn4b35_branch2c", "res5a_branch1", "res5a_branch2b", "bn5c_branch2b", "fc_kinetics"):
        assert name in layers, name
    assert not any(n.startswith(("res5", "bn5")) and n.endswith("_t") for n in layers)  # res5 is 2-D
    assert len(layers) == 2 * (1 + 47 * 4 + 3 * 3 + 4) + 1  # conv+BN pairs, and fc
    assert caffe_import.block_depths(layers) == (3, 8, 36, 3)


def test_caffe_import_of_a_flow_net(tmp_path):
    torch.manual_seed(2)
    flow = randomise(build_model("p3d_tiny", 4, 2), seed=3)
    path = write_caffemodel(tmp_path / "flow.caffemodel", official_layers(flow, (), "fc_sports1m"))
    arch, model = caffe_import.load_caffe(path)
    assert (arch, model.in_channels, model.fc.out_features) == ("p3d_tiny", 2, 4)
    x = torch.randn(1, 2, 8, 32, 32) * 20
    with torch.no_grad():
        expected = flow(x)
        torch.testing.assert_close(model(x), expected, atol=1e-5 * float(expected.abs().max()), rtol=1e-4)


def test_caffe_import_checks_shapes_and_completeness(tmp_path, small_rgb):
    layers = official_layers(small_rgb)

    def expect(changed, message):
        path = write_caffemodel(tmp_path / "bad.caffemodel", changed)
        with pytest.raises(StreamsError, match=message) as err:
            caffe_import.load_caffe(path)
        assert str(path) in str(err.value)

    swapped = [(n, [b[0].transpose(0, 1, 3, 4, 2).copy()] if n == "res3a_branch2b_t" else b) for n, b in layers]
    expect(swapped, r"res3a_branch2b_t.*shape \[32, 32, 1, 1, 3\].*needs \[32, 32, 3, 1, 1\]")
    expect([(n, b) for n, b in layers if n != "bn4a_branch2b"], "layer 'bn4a_branch2b' is missing")
    expect([(n, b[:3] if n == "bn2a_branch2a" else b) for n, b in layers], "bn2a_branch2a.*3 blob.*expected 4")
    expect([(n, b + [np.zeros(b[0].shape[0], np.float32)] if n == "res2a_branch2a" else b) for n, b in layers],
           "res2a_branch2a.*2 blob.*expected 1")
    expect(layers + [("res6a_branch2a", [np.zeros((4, 4, 1, 1, 1), np.float32)])],
           "net does not have: res6a_branch2a")
    expect(layers + [("fc_extra", [np.zeros((3, 4), np.float32), np.zeros(3, np.float32)])],
           "one classifier layer named fc.*fc_extra, fc_kinetics")


def test_caffe_import_refuses_unreadable_files(tmp_path, small_rgb):
    good = write_caffemodel(tmp_path / "good.caffemodel", official_layers(small_rgb)).read_bytes()
    cases = {"truncated.caffemodel": good[: len(good) // 2],
             "random.caffemodel": os.urandom(4096),
             "pickle.caffemodel": pickle.dumps({"state_dict": {"w": [1.0, 2.0]}}),
             "empty.caffemodel": b""}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(StreamsError) as err:
            caffe_import.load_caffe(path)
        assert str(path) in str(err.value), name
    with pytest.raises(StreamsError, match="no such file"):
        caffe_import.load_caffe(tmp_path / "absent.caffemodel")


# --- pseudo-3d-pytorch -------------------------------------------------------------------------

class PortBottleneck(nn.Module):
    """qijiezhao/pseudo-3d-pytorch p3d_model.py `Bottleneck`, re-implemented: same names, same wiring."""

    def __init__(self, inplanes, planes, stride, downsample, n_s, depth_3d, kind, expansion=4):
        super().__init__()
        self.downsample, self.n_s, self.depth_3d, self.kind = downsample, n_s, depth_3d, kind
        if n_s < depth_3d:
            stride_p = 1 if n_s == 0 else ((1, 2, 2) if downsample is not None else stride)
            self.conv1 = nn.Conv3d(inplanes, planes, 1, stride=stride_p, bias=False)
            self.bn1 = nn.BatchNorm3d(planes)
            self.conv2 = nn.Conv3d(planes, planes, (1, 3, 3), padding=(0, 1, 1), bias=False)
            self.bn2 = nn.BatchNorm3d(planes)
            self.conv3 = nn.Conv3d(planes, planes, (3, 1, 1), padding=(1, 0, 0), bias=False)
            self.bn3 = nn.BatchNorm3d(planes)
            self.conv4 = nn.Conv3d(planes, planes * expansion, 1, bias=False)
            self.bn4 = nn.BatchNorm3d(planes * expansion)
        else:
            self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=2 if n_s == depth_3d else 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv_normal = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
            self.bn_normal = nn.BatchNorm2d(planes)
            self.conv4 = nn.Conv2d(planes, planes * expansion, 1, bias=False)
            self.bn4 = nn.BatchNorm2d(planes * expansion)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        if self.n_s < self.depth_3d:
            if self.kind == "A":
                out = F.relu(self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out))))))
            elif self.kind == "B":
                out = F.relu(self.bn2(self.conv2(out))) + F.relu(self.bn3(self.conv3(out)))
            else:
                s = F.relu(self.bn2(self.conv2(out)))
                out = s + F.relu(self.bn3(self.conv3(s)))
        else:
            out = F.relu(self.bn_normal(self.conv_normal(out)))
        out = self.bn4(self.conv4(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class PortP3D(nn.Module):
    """qijiezhao/pseudo-3d-pytorch `P3D` at any of our specs (its own is fixed to 64-wide stems)."""

    def __init__(self, spec: P3DSpec, num_classes: int, in_channels: int = 3):
        super().__init__()
        kinds = [k for stage in block_kinds(spec.depths) for k in stage]
        depth_3d = sum(spec.depths[:3])
        self.conv1_custom = nn.Conv3d(in_channels, spec.stem, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3),
                                      bias=False)
        self.bn1 = nn.BatchNorm3d(spec.stem)
        inplanes, cnt = spec.stem, 0
        for k, (depth, planes) in enumerate(zip(spec.depths, spec.widths, strict=True)):
            blocks = []
            for i in range(depth):
                downsample = None
                if i == 0:
                    if cnt < depth_3d:
                        conv = nn.Conv3d(inplanes, planes * 4, 1, stride=1 if cnt == 0 else (1, 2, 2), bias=False)
                        downsample = nn.Sequential(conv, nn.BatchNorm3d(planes * 4))
                    else:
                        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=2, bias=False),
                                                   nn.BatchNorm2d(planes * 4))
                blocks.append(PortBottleneck(inplanes, planes, 2 if k and not i else 1, downsample, cnt, depth_3d,
                                             kinds[cnt] if cnt < depth_3d else None))
                inplanes, cnt = planes * 4, cnt + 1
            setattr(self, f"layer{k + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1_custom(x)))
        x = F.max_pool3d(x, (2, 3, 3), stride=2, padding=(0, 1, 1))
        for layer in (self.layer1, self.layer2, self.layer3):
            x = F.max_pool3d(layer(x), (2, 1, 1), stride=(2, 1, 1))
        x = x.view(-1, x.shape[1], x.shape[3], x.shape[4])  # time is 1 here for 16-frame clips
        x = self.layer4(x).mean(dim=(2, 3))  # their AvgPool2d(5) over res5's 5x5 at 160x160
        return self.fc(x)


def save_port_checkpoint(path: Path, net: nn.Module, prefix: str = "", legacy: bool = False) -> Path:
    """As the port's training script saves: a dict with 'state_dict'; `legacy`: the pre-1.6 (non-zip)
    serialisation of the 2017-2018 conversions."""
    state = {prefix + k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"epoch": 10, "arch": "P3D199", "best_prec1": 81.2, "state_dict": state}, path,
               _use_new_zipfile_serialization=not legacy)
    return path


@pytest.fixture(scope="module")
def port_net():
    torch.manual_seed(4)
    return randomise(PortP3D(ARCHS["p3d_small"], 6), seed=5)


@pytest.mark.filterwarnings("ignore:pseudo-3d-pytorch wires")
@pytest.mark.parametrize("prefix, legacy", [("", False), ("module.", True)], ids=["plain", "dataparallel-legacy"])
def test_pseudo3d_import_lands_every_tensor_and_reproduces_the_port(tmp_path, port_net, prefix, legacy):
    path = save_port_checkpoint(tmp_path / "p3d_rgb_199.checkpoint.pth.tar", port_net, prefix, legacy)
    arch, model = port_import.load_pseudo3d(path)
    assert (arch, model.in_channels, model.fc.out_features) == ("p3d_small", 3, 6)
    theirs = port_net.state_dict()
    ours = model.state_dict()
    assert torch.equal(ours["conv1.weight"], theirs["conv1_custom.weight"])
    assert torch.equal(ours["layer2.1.conv_t.weight"], theirs["layer2.1.conv3.weight"])
    assert torch.equal(ours["layer4.0.conv_s.weight"], theirs["layer4.0.conv_normal.weight"])
    assert torch.equal(ours["layer3.0.downsample.1.running_var"], theirs["layer3.0.downsample.1.running_var"])
    kinds = {name: m.kind for name, m in model.named_modules() if hasattr(m, "kind")}
    assert set(kinds.values()) == {"A", "B", "C"}
    for name, kind in kinds.items():  # C blocks' expand conv carries the port's 1:1 sum
        factor = 2.0 if kind == "C" else 1.0
        torch.testing.assert_close(ours[f"{name}.conv_expand.weight"], factor * theirs[f"{name}.conv4.weight"])
    x = torch.randn(2, 3, 16, 64, 64, generator=torch.Generator().manual_seed(6)) * 50
    with torch.no_grad():
        expected = port_net(x)
        torch.testing.assert_close(port_import.pseudo3d_forward(model, x), expected,
                                   atol=1e-5 * float(expected.abs().max()), rtol=1e-4)
        # Our faithful Caffe wiring is another function: the documented caveat is real.
        assert (model(x) - expected).abs().max() > 1e-2


def test_pseudo3d_import_warns_about_the_wiring(tmp_path, port_net):
    path = save_port_checkpoint(tmp_path / "p3d_flow.pth", port_net)
    with pytest.warns(UserWarning, match="does not reproduce"):
        port_import.load_pseudo3d(path)


@pytest.mark.parametrize("arch", ["p3d63", "p3d131", "p3d199"])
def test_pseudo3d_mapping_matches_the_port_names_and_shapes(arch):
    with torch.device("meta"):
        ours = build_model(arch, 400, 2)
        theirs = PortP3D(ARCHS[arch], 400, 2)
    their_state = {k: v for k, v in theirs.state_dict().items() if not k.endswith("num_batches_tracked")}
    mapping = port_import.port_mapping(ours)
    assert sorted(mapping.values()) == sorted(their_state)
    our_state = ours.state_dict()
    for key, their_key in mapping.items():
        assert our_state[key].shape == their_state[their_key].shape, key
    assert "conv1_custom.weight" in their_state and "layer4.2.bn_normal.running_var" in their_state


def test_pseudo3d_import_refuses_bad_files(tmp_path, port_net):
    good = save_port_checkpoint(tmp_path / "good.pth", port_net).read_bytes()
    (tmp_path / "truncated.pth").write_bytes(good[: len(good) // 2])
    (tmp_path / "random.pth").write_bytes(os.urandom(4096))
    with open(tmp_path / "code.pth", "wb") as f:  # a pickle that would call os.system on a plain load
        f.write(b"cos\nsystem\n(S'echo pwned'\ntR.")
    torch.save({"state_dict": {"conv1_custom.weight": [1, 2]}}, tmp_path / "no_tensors.pth")
    wrong = {k: v for k, v in port_net.state_dict().items() if not k.endswith("num_batches_tracked")}
    wrong["layer2.0.conv2.weight"] = wrong["layer2.0.conv2.weight"][:, :, :, :2]
    torch.save({"state_dict": wrong}, tmp_path / "wrong_shape.pth")
    extra = dict(wrong, **{"layer2.0.conv2.weight": port_net.state_dict()["layer2.0.conv2.weight"],
                           "layer5.0.conv1.weight": torch.zeros(1)})
    torch.save({"state_dict": extra}, tmp_path / "extra.pth")
    expectations = {"truncated.pth": r"cannot be read \(truncated or not a PyTorch file\?\)",
                    "random.pth": r"cannot be read \(truncated or not a PyTorch file\?\)",
                    "code.pth": r"holds code \(the pickled Python object os.system\).*was not loaded",
                    "no_tensors.pth": "no state dict of tensors",
                    "wrong_shape.pth": r"layer2\.0\.conv2\.weight has shape \[32, 32, 1, 2, 3\].*"
                                       r"needs \[32, 32, 1, 3, 3\]",
                    "extra.pth": "the net does not have: layer5.0.conv1.weight"}
    for name, message in expectations.items():
        path = tmp_path / name
        with pytest.raises(StreamsError, match=message) as err:
            port_import.load_pseudo3d(path)
        assert str(path) in str(err.value), name


# --- import_weights: a normal checkpoint ------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:pseudo-3d-pytorch wires")
def test_import_weights_writes_a_checkpoint_load_checkpoint_reads(tmp_path, small_rgb, port_net, clip):
    caffemodel = write_caffemodel(tmp_path / "p3d_rgb.caffemodel", official_layers(small_rgb))
    classes = tmp_path / "classes.txt"
    classes.write_text("1 jump\n2 run\n3 swim\n4 throw\n5 walk\n")
    out = import_weights(caffemodel, tmp_path / "rgb.pt", classes=classes)
    model, ckpt = load_checkpoint(out)
    assert (ckpt.arch, ckpt.modality, ckpt.classes) == ("p3d_small", "rgb", ["jump", "run", "swim", "throw", "walk"])
    assert ckpt.input_convention == "BGR 0-255 minus [104, 117, 123]"
    assert ckpt.train_config["clip_len"] == 16 and ckpt.train_config["crop"] == 160
    assert ckpt.state["imported_from"]["source"] == "caffe"
    with torch.no_grad():
        expected = small_rgb(clip)
        torch.testing.assert_close(model(clip), expected, atol=1e-5 * float(expected.abs().max()), rtol=1e-4)

    flow_port = randomise(PortP3D(ARCHS["p3d_tiny"], 3, in_channels=2), seed=7)
    port = save_port_checkpoint(tmp_path / "p3d_flow_199.checkpoint.pth.tar", flow_port)
    model, ckpt = load_checkpoint(import_weights(port, tmp_path / "flow.pt"))
    assert (ckpt.arch, ckpt.modality, ckpt.classes) == ("p3d_tiny", "flow", ["class_000", "class_001", "class_002"])
    assert ckpt.input_convention.endswith("minus 128")
    assert ckpt.state["imported_from"]["source"] == "pseudo3d"


def test_source_detection_and_class_lists(tmp_path):
    assert detect_source(Path("x.caffemodel")) == "caffe"
    assert detect_source(Path("p3d_rgb_199.checkpoint.pth.tar")) == "pseudo3d"
    unnamed = tmp_path / "weights"
    torch.save({"state_dict": {}}, unnamed)
    assert detect_source(unnamed) == "pseudo3d"
    (tmp_path / "k.txt").write_text("abseiling\nair drumming\n\n")
    assert read_classes(tmp_path / "k.txt", 2) == ["abseiling", "air drumming"]
    with pytest.raises(StreamsError, match="2 class names, but the model has 3 outputs"):
        read_classes(tmp_path / "k.txt", 3)


def test_import_weights_on_one_of_our_checkpoints_says_to_use_it_as_it_is(tmp_path):
    import dataclasses

    from streams.checkpoint import make_payload, save_checkpoint
    from streams.config import ModelConfig, TrainConfig

    ours = tmp_path / "ours.pt"
    save_checkpoint(ours, make_payload(build_model("p3d_tiny", 3, 3), arch="p3d_tiny", modality="rgb",
                                       classes=["a", "b", "c"], input_convention="BGR 0-255 minus [104, 117, 123]",
                                       model_config=dataclasses.asdict(ModelConfig(arch="p3d_tiny")),
                                       train_config=dataclasses.asdict(TrainConfig()), step=1, epoch=1, metrics={}))
    with pytest.raises(StreamsError, match=r"ours.pt is already one of our stream checkpoints \(p3d_tiny, rgb\): "
                                           r"use it as it is") as err:
        import_weights(ours, tmp_path / "imported.pt")
    assert "\n" not in str(err.value) and not (tmp_path / "imported.pt").exists()
