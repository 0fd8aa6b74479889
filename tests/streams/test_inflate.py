"""Starting from a 2-D ImageNet ResNet: the P3D net equals it at step 0 on a clip of one repeated image.

The reference is written here: a 2-D bottleneck ResNet with torchvision's key names (conv1, bn1,
layerN.i.conv1/bn1/conv2/bn2/conv3/bn3, downsample.0/1, fc), strides on the first 1x1 like Caffe's
ResNets (torchvision puts them on the 3x3; the weights are interchangeable) and Caffe's stem pool
(3x3 stride 2, ceil mode, no padding; torchvision pads by 1 instead). Equality is tested against this
net, in eval mode and in training mode with partial BN (bn1 on batch statistics).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from streams.errors import StreamsError
from streams.inflate import TORCHVISION_MEAN_RGB, TORCHVISION_STD_RGB, load_pretrained
from streams.p3d import ARCHS, build_model
from streams.transforms import to_tensor

pytestmark = pytest.mark.numerical  # also run with 2 threads by `make test`


class Bottleneck2d(nn.Module):
    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.downsample = None
        if stride != 1 or cin != width * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(width * 4))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet2d(nn.Module):
    def __init__(self, depths, widths, stem, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        cin = stem
        for stage, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            blocks = []
            for i in range(depth):
                blocks.append(Bottleneck2d(cin, width, 2 if stage > 0 and i == 0 else 1))
                cin = width * 4
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, num_classes)

    def features(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, ceil_mode=True)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean((2, 3))


def random_resnet(arch: str, seed: int = 0) -> ResNet2d:
    """A 2-D ResNet of `arch`'s depths and widths with random weights and BN statistics."""
    spec = ARCHS[arch]
    torch.manual_seed(seed)
    net = ResNet2d(spec.depths, spec.widths, spec.stem)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, (2.0 / (m.weight[0].numel())) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(params=["p3d_tiny", "p3d_small"])
def arch(request):
    return request.param


def _frames(seed: int, size: int = 48) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (2, size, size, 3), generator=gen, dtype=torch.uint8)


def close_to(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> bool:
    """Equal within `rel` of the largest magnitude compared: summation order (BLAS, thread count, CPU)
    moves every element by a rounding error of the whole sum, not of the element."""
    return bool(((actual - expected).abs().max() <= rel * expected.abs().max()).item())


def test_equals_the_2d_resnet_on_a_still_clip(arch, tmp_path):
    """In float64, so that the CPU, BLAS and thread count do not matter (float32 summation order moved
    features of ~900 by 1e-3 on an AMD EPYC). What is left is the identity BN of T, whose running_var
    1 - eps is stored in float32: ~1e-8 of the largest feature (measured 5e-9 and 9e-9); a wrong tap or
    scale moves features by their own size."""
    ref = random_resnet(arch)
    path = tmp_path / "resnet.pth"
    torch.save({"module." + k: v for k, v in ref.state_dict().items()}, path)  # a DataParallel-style file
    model = build_model(arch, 10, dropout=0.0)
    load_pretrained(model, path, pretrained_input="caffe")
    model, ref = model.double(), ref.double()
    images = _frames(0)  # uint8 BGR [B, H, W, 3]
    image_input = torch.stack([to_tensor(im.numpy()[None], "rgb")[:, 0] for im in images]).double()  # [B, 3, H, W]
    clip = image_input[:, :, None].expand(-1, -1, 8, -1, -1).contiguous()  # the image repeated over 8 frames

    model.eval()
    with torch.no_grad():
        assert close_to(model.features(clip), ref.features(image_input), 1e-7)
        # Training mode with partial BN: bn1 uses batch statistics, equal over a still clip and its image.
        model.set_partial_bn(True)
        model.train()
        ref.bn1.train()
        expected = ref.features(image_input)
        assert close_to(model.features(clip), expected, 1e-7)
        assert expected.std() > 0.05  # not trivially equal


def test_temporal_init(arch, tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(random_resnet(arch).state_dict(), path)
    model = build_model(arch, 10)
    load_pretrained(model, path)
    for layer in (model.layer1, model.layer2, model.layer3):
        for block in layer:
            w = block.conv_t.weight
            if block.kind == "A":
                assert torch.equal(w[:, :, 1, 0, 0], torch.eye(w.shape[0]))
                assert not w[:, :, (0, 2)].any()
            else:
                assert not w.any()


def test_accepts_timm_and_wrapped_state_dicts(tmp_path):
    ref = random_resnet("p3d_tiny")
    state = ref.state_dict()
    torch.save({"state_dict": state}, tmp_path / "a.pth")
    torch.save({"model": {"module." + k: v for k, v in state.items()}}, tmp_path / "b.pth")
    models = []
    for name in ("a.pth", "b.pth"):
        model = build_model("p3d_tiny", 4)
        load_pretrained(model, tmp_path / name, pretrained_input="caffe")
        models.append(model.state_dict())
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0] if not k.startswith("fc."))
    assert torch.equal(models[0]["layer4.0.conv_s.weight"], state["layer4.0.conv2.weight"])


def test_torchvision_conv1_is_converted_to_bgr_0_255_input(tmp_path):
    ref = random_resnet("p3d_tiny")
    path = tmp_path / "tv.pth"
    torch.save(ref.state_dict(), path)
    model = build_model("p3d_tiny", 4)
    load_pretrained(model, path, pretrained_input="torchvision")
    bgr = _frames(1, 32)[0].numpy()
    ours = F.conv3d(to_tensor(bgr[None], "rgb")[None], model.conv1.weight, stride=(1, 2, 2), padding=(0, 3, 3))[:, :, 0]
    rgb01 = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255
    tv_input = ((rgb01 - torch.tensor(TORCHVISION_MEAN_RGB).view(3, 1, 1))
                / torch.tensor(TORCHVISION_STD_RGB).view(3, 1, 1))
    theirs = ref.conv1(tv_input[None])
    # The two conventions' means differ by < 1 grey level: a near-constant offset, tiny next to the signal.
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    err = (ours - theirs)[inner]
    assert err.abs().max() < 0.02 * theirs[inner].abs().max()
    assert (err - err.mean((2, 3), keepdim=True)).abs().max() < 1e-4 * theirs[inner].abs().max()


def test_flow_conv1_is_the_channel_average(tmp_path):
    ref = random_resnet("p3d_tiny")
    path = tmp_path / "r.pth"
    torch.save(ref.state_dict(), path)
    rgb = build_model("p3d_tiny", 4, in_channels=3)
    load_pretrained(rgb, path)
    flow = build_model("p3d_tiny", 4, in_channels=2)
    load_pretrained(flow, path)
    average = rgb.conv1.weight.mean(1)
    assert flow.conv1.weight.shape[1] == 2
    assert torch.allclose(flow.conv1.weight[:, 0], average) and torch.allclose(flow.conv1.weight[:, 1], average)
    assert torch.equal(flow.layer2[0].conv_s.weight, rgb.layer2[0].conv_s.weight)


def test_a_resnet_of_other_depths_is_refused(tmp_path):
    path = tmp_path / "deeper.pth"
    torch.save(random_resnet("p3d_small").state_dict(), path)
    with pytest.raises(StreamsError, match="deeper.pth"):
        load_pretrained(build_model("p3d_tiny", 4), path)
    with pytest.raises(StreamsError, match="deeper.pth.*layer1.0.conv1"):
        spec = ARCHS["p3d_small"]
        narrow = ResNet2d(spec.depths, (8, 32, 64, 128), spec.stem)
        torch.save(narrow.state_dict(), path)
        load_pretrained(build_model("p3d_small", 4), path)


def test_bad_files(tmp_path):
    with pytest.raises(StreamsError, match="does not exist"):
        load_pretrained(build_model("p3d_tiny", 4), tmp_path / "absent.pth")
    # a folder said "does not exist" of a folder that does
    with pytest.raises(StreamsError, match=rf"^model.pretrained: {tmp_path} is a folder, not a file"):
        load_pretrained(build_model("p3d_tiny", 4), tmp_path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(StreamsError, match="junk.pth"):
        load_pretrained(build_model("p3d_tiny", 4), junk)
