"""SynthActions: layout, determinism, group splits, resuming, and flow that is exact."""
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from flow.formats import read_flo
from pipeline.datasets import DatasetConfig, read_dataset
from pipeline.errors import PipelineError
from pipeline.synth import SynthConfig, generate, render_clip
from pipeline.synth.design import APPEARANCES, GAMUT, GREY, MOTIONS, OBJECT_GREY, palette
from pipeline.synth.render import MIXED, OBJECT

NAME = re.compile(r"^(\w+)/v_(\w+)_g(\d\d)_c(\d\d)\.avi$")


def decode(path: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return np.array(frames)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "tiny"
    summary = generate(SynthConfig.tiny(), root)
    assert (summary.videos, summary.generated, summary.skipped) == (24, 24, 0)
    return root


def test_layout_and_class_index(tiny):
    cfg = SynthConfig.tiny()
    assert cfg.class_names() == ["RedUp", "RedRotate", "BlueUp", "BlueRotate"]
    class_ind = (tiny / "annotations/classInd.txt").read_bytes()
    assert class_ind == b"1 RedUp\r\n2 RedRotate\r\n3 BlueUp\r\n4 BlueRotate\r\n"
    videos = sorted(tiny.glob("videos/*/*.avi"))
    assert len(videos) == 24
    assert videos[0].relative_to(tiny).as_posix() == "videos/BlueRotate/v_BlueRotate_g01_c01.avi"
    frames = decode(videos[0])
    assert frames.shape == (20, 32, 32, 3)
    flows = sorted((tiny / "flow_gt/BlueRotate/v_BlueRotate_g01_c01").iterdir())
    assert [p.name for p in flows] == [f"flow_{i:05d}.flo" for i in range(1, 20)]
    flow, valid = read_flo(flows[0])
    assert flow.shape == (32, 32, 2) and valid.all()
    assert not list(tiny.rglob(".*"))  # no temporary leftovers
    for name in ("trainlist01.txt", "testlist03.txt"):
        assert (tiny / "annotations" / name).read_bytes().count(b"\r\n") > 0
        assert b"\n" not in (tiny / "annotations" / name).read_bytes().replace(b"\r\n", b"")


def test_same_config_gives_identical_files(tiny, tmp_path):
    generate(SynthConfig.tiny(), tmp_path / "again")
    assert files(tmp_path / "again") == files(tiny)
    other = SynthConfig.tiny(seed=1)
    generate(other, tmp_path / "seed1")
    video = "videos/RedUp/v_RedUp_g01_c01.avi"
    assert files(tmp_path / "seed1")[video] != files(tiny)[video]


def test_splits_hold_out_whole_groups(tiny):
    everything = {p.relative_to(tiny / "videos").as_posix() for p in tiny.glob("videos/*/*.avi")}
    classes = (tiny / "annotations/classInd.txt").read_text().split()[1::2]
    held_out = []
    for split in (1, 2, 3):
        train = (tiny / f"annotations/trainlist0{split}.txt").read_text().splitlines()
        test = (tiny / f"annotations/testlist0{split}.txt").read_text().splitlines()
        train_paths = [line.split()[0] for line in train]
        for line in train:  # "Class/v_Class_gGG_cCC.avi <1-based id of Class>"
            path, label = line.split()
            assert classes[int(label) - 1] == NAME.match(path)[1] == NAME.match(path)[2]
        assert set(train_paths) | set(test) == everything and not set(train_paths) & set(test)
        train_groups = {NAME.match(p)[3] for p in train_paths}
        test_groups = {NAME.match(p)[3] for p in test}
        assert test_groups and not train_groups & test_groups
        held_out.append(test_groups)
    assert not (held_out[0] & held_out[1] or held_out[0] & held_out[2] or held_out[1] & held_out[2])


def test_dataset_reader_reads_it_back(tiny):
    data = read_dataset(DatasetConfig(format="synth", root=str(tiny)), "2")
    assert data.classes == SynthConfig.tiny().class_names()
    assert len(data.videos) == 24 and not data.missing
    record = data.videos[0]
    assert (record.video_id, record.label, record.group, record.path) == (
        "RedUp/v_RedUp_g01_c01", 0, "g01", tiny / "videos/RedUp/v_RedUp_g01_c01.avi")
    assert {v.group for v in data.test()} == {"g02"}
    assert len(read_dataset(DatasetConfig(format="synth", root=str(tiny)), "all").splits()) == 3


def test_default_sizes():
    cfg = SynthConfig()
    cfg.validate()
    assert len(cfg.class_names()) == 12 and cfg.groups * cfg.clips_per_group == 28
    assert [cfg.test_groups(s) for s in (1, 2, 3)] == [[1, 2], [3, 4], [5, 6]]


def test_resumes_and_refuses_to_mix(tiny, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny, root)
    before = files(root)
    (root / "videos/BlueUp/v_BlueUp_g02_c01.avi").unlink()  # as if killed before this video was renamed
    (root / "videos/BlueUp/.v_BlueUp_g02_c02.tmp.avi").write_bytes(b"half")
    (root / "flow_gt/BlueUp/.v_BlueUp_g02_c02.tmp").mkdir()
    summary = generate(SynthConfig.tiny(), root)
    assert (summary.generated, summary.skipped) == (1, 23)
    assert files(root) == before and not list(root.rglob(".*"))
    with pytest.raises(PipelineError, match="other settings .*synth.frames"):
        generate(SynthConfig.tiny(frames=12), root)
    summary = generate(SynthConfig.tiny(frames=12), root, force=True)
    assert summary.generated == 24 and decode(root / "videos/RedUp/v_RedUp_g01_c01.avi").shape[0] == 12
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/thesis.tex").write_text("x")
    with pytest.raises(PipelineError, match="not empty and holds no SynthActions"):
        generate(SynthConfig.tiny(), tmp_path / "mine")


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x0 = np.clip(np.floor(x).astype(int), 0, image.shape[1] - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, image.shape[0] - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = (1 - fx) * image[y0, x0] + fx * image[y0, x0 + 1]
    bottom = (1 - fx) * image[y0 + 1, x0] + fx * image[y0 + 1, x0 + 1]
    return (1 - fy) * top + fy * bottom


def _unoccluded(layers0: np.ndarray, layers1: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Pixels of frame t whose target in t+1 is inside the frame and shows the same surface at all
    four bilinear neighbours: no occlusion, disocclusion, anti-aliased edge or border."""
    h, w = layers0.shape
    ys, xs = np.mgrid[0:h, 0:w]
    tx, ty = xs + flow[..., 0], ys + flow[..., 1]
    mask = (tx >= 1) & (tx <= w - 2) & (ty >= 1) & (ty <= h - 2) & (layers0 != MIXED)
    x0 = np.clip(np.floor(tx).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(ty).astype(int), 0, h - 2)
    for dy in (0, 1):
        for dx in (0, 1):
            mask &= layers1[y0 + dy, x0 + dx] == layers0
    return mask


def test_ground_truth_flow_warps_frame_t_plus_1_onto_frame_t(tmp_path):
    """Backward warping with the stored flow reproduces frame t to interpolation and rounding error;
    zero, shifted, reversed or next-pair flow does not, so the test fails on wrong flow."""
    # Oscillation accelerates, so flow of the wrong pair differs; every clip has the occluder.
    cfg = SynthConfig.tiny(motions=["oscillate", "rotate"], noise=0.0, illumination=0.0, occluder=1.0)
    generate(cfg, tmp_path)
    errors: dict[tuple[str, str], list[np.ndarray]] = {}  # (flow, surface) -> errors of checked pixels
    worst_pair = 0.0
    for class_index, name in enumerate(cfg.class_names()):
        for group in (1, 2, 3):
            stem = f"v_{name}_g{group:02d}_c01"
            frames = decode(tmp_path / "videos" / name / f"{stem}.avi").astype(np.float64)
            clip = render_clip(cfg, class_index, group, 1)  # layers, for the occlusion mask
            assert np.array_equal(frames, clip.frames)  # FFV1 is lossless
            flows = [read_flo(tmp_path / f"flow_gt/{name}/{stem}/flow_{i:05d}.flo")[0] for i in range(1, 20)]
            assert np.array_equal(np.array(flows), clip.flow)
            h, w = flows[0].shape[:2]
            ys, xs = np.mgrid[0:h, 0:w]
            for t in range(len(flows) - 1):
                candidates = {"exact": flows[t], "zero": np.zeros_like(flows[t]), "reversed": -flows[t],
                              "shift 1 px": flows[t] + [1.0, 0.0], "x + 0.1 px": flows[t] + [0.1, 0.0],
                              "y - 0.1 px": flows[t] - [0.0, 0.1], "next pair": flows[t + 1]}
                for key, flow in candidates.items():
                    mask = _unoccluded(clip.layers[t], clip.layers[t + 1], flow)
                    if key in ("zero", "reversed"):  # only where something moves
                        mask &= np.hypot(flows[t][..., 0], flows[t][..., 1]) > 0.5
                    warped = _bilinear(frames[t + 1], xs + flow[..., 0], ys + flow[..., 1])
                    error = np.abs(warped - frames[t]).mean(-1)
                    # The object is a small part of the frame: judged on its own so its errors show.
                    on_object = clip.layers[t] == OBJECT
                    for surface, on in (("object", on_object), ("scene", ~on_object)):
                        errors.setdefault((key, surface), []).append(error[mask & on])
                    if key == "exact":
                        assert mask.mean() > 0.4  # most of the frame is checked
                        worst_pair = max(worst_pair, error[mask].mean())
    mean = {key: float(np.concatenate(values).mean()) for key, values in errors.items()}
    assert worst_pair < 2.5, mean
    bounds = {"object": 2.0, "scene": 1.0}  # grey levels: bilinear interpolation of the textures + rounding
    for surface, bound in bounds.items():
        assert mean["exact", surface] < bound, mean
        for key in ("zero", "reversed", "shift 1 px"):
            assert mean[key, surface] > 2 * bound, (key, mean)
        for key in ("x + 0.1 px", "y - 0.1 px"):  # the exact flow is the best one
            assert mean[key, surface] > mean["exact", surface] + 0.1, (key, mean)
    # The camera pans at a constant speed, so only the object tells consecutive pairs apart.
    assert mean["next pair", "object"] > 1.5 * mean["exact", "object"], mean


def test_whole_pixel_motion_is_reproduced_exactly():
    """With 1 px/frame and a still camera the flow lands on pixel centres: no interpolation, and the
    pixels it points to must be identical to the last grey level."""
    cfg = SynthConfig.tiny(motions=["up", "down"], camera_pan=0.0, speed=[1.0, 1.0], noise=0.0,
                           illumination=0.0)
    for class_index in range(4):
        clip = render_clip(cfg, class_index, 1, 1)
        ys, xs = np.mgrid[0:32, 0:32]
        for t, flow in enumerate(clip.flow):
            step = np.rint(flow).astype(int)
            assert np.abs(flow - step).max() < 1e-3
            tx, ty = np.clip(xs + step[..., 0], 0, 31), np.clip(ys + step[..., 1], 0, 31)
            same = (clip.layers[t] != MIXED) & (clip.layers[t + 1][ty, tx] == clip.layers[t])
            same &= (xs + step[..., 0] == tx) & (ys + step[..., 1] == ty)
            assert same.mean() > 0.5
            assert np.array_equal(clip.frames[t + 1][ty, tx][same], clip.frames[t][same])
            assert (np.abs(step).sum(-1)[clip.layers[t] == OBJECT] == 1).all()  # the object moved


@pytest.mark.parametrize("motion", MOTIONS)
def test_motions_do_what_they_say(motion):
    """The object's flow relative to the background: its mean, and its divergence and curl about the
    object's centre, per frame pair."""
    cfg = SynthConfig.tiny(motions=[motion], size=64, occluder=0.0, noise=0.0, illumination=0.0)
    mean, divergence, curl = [], [], []
    for group in (1, 2, 3):
        clip = render_clip(cfg, 0, group, 1)
        ys, xs = np.mgrid[0:64, 0:64]
        for flow, layers in zip(clip.flow, clip.layers, strict=False):  # T - 1 flows: each with its first frame
            camera = flow[layers == 0].mean(0)
            on = layers == OBJECT
            r = np.stack([xs[on], ys[on]], -1) - [xs[on].mean(), ys[on].mean()]
            relative = flow[on] - camera
            mean.append(relative.mean(0))
            divergence.append((r * relative).sum(-1).mean() / (r ** 2).sum(-1).mean())
            curl.append((r[:, 0] * relative[:, 1] - r[:, 1] * relative[:, 0]).mean() / (r ** 2).sum(-1).mean())
    mean, divergence, curl = np.array(mean), np.array(divergence), np.array(curl)
    if motion in ("up", "down"):
        assert ((mean[:, 1] < -0.3) if motion == "up" else (mean[:, 1] > 0.3)).all()
        assert np.abs(mean[:, 0]).max() < 0.05 and np.abs(curl).max() < 0.01
    elif motion in ("zoom_in", "zoom_out"):
        assert ((divergence > 0.005) if motion == "zoom_in" else (divergence < -0.005)).all()
        assert np.abs(curl).max() < 0.01
    elif motion == "rotate":
        assert (np.abs(curl) > 0.02).all() and np.abs(divergence).max() < 0.01
        assert (curl > 0).any() and (curl < 0).any()  # both senses occur: no mirror-image classes
    elif motion == "oscillate":
        assert (mean[:, 0] > 0.2).any() and (mean[:, 0] < -0.2).any()  # back and forth
        assert np.abs(mean[:, 1]).max() < 0.05 and np.abs(curl).max() < 0.01


def test_nuisances_change_pixels_not_geometry():
    cfg = SynthConfig.tiny()
    plain = render_clip(SynthConfig.tiny(noise=0.0, illumination=0.0), 1, 2, 1)
    noisy = render_clip(cfg, 1, 2, 1)
    assert np.array_equal(plain.flow, noisy.flow) and np.array_equal(plain.layers, noisy.layers)
    assert np.abs(plain.frames.astype(int) - noisy.frames).mean() > 1.0


def test_camera_pan_moves_the_background():
    still = render_clip(SynthConfig.tiny(camera_pan=0.0, occluder=0.0), 0, 1, 1)
    background = still.layers[:-1] == 0
    assert np.abs(still.flow[background]).max() == 0.0
    panned = render_clip(SynthConfig.tiny(camera_pan=0.6, occluder=0.0), 0, 1, 1)
    assert np.abs(panned.flow[panned.layers[:-1] == 0]).max() > 0.0


def test_appearances_look_alike_in_grey():
    """Flow is computed on grey frames; each appearance's colours have the same grey levels, so the
    flow stream sees no difference between appearances."""
    colours = {name: palette(hue, OBJECT_GREY, 0.9) for name, hue in APPEARANCES.items()}
    for name, pair in colours.items():
        # float64 throughout: grey levels of ~50-180 are exact to ~1e-13, so 1e-6 only absorbs rounding.
        assert np.allclose(pair @ GREY, OBJECT_GREY, atol=1e-6), name
        assert ((pair >= GAMUT[0]) & (pair <= GAMUT[1])).all()
    assert np.abs(colours["red"] - colours["blue"]).max() > 60  # but not alike in colour


def test_no_class_is_the_mirror_of_another():
    """Training flips clips horizontally, so no motion may be another's mirror image."""
    assert not {"left", "right", "clockwise", "anticlockwise", "cw", "ccw"} & set(MOTIONS)
    with pytest.raises(ValueError, match="motions: must be distinct names"):
        SynthConfig(motions=["up", "left"]).validate()


@pytest.mark.parametrize("kwargs, message", [
    (dict(appearances=["red", "red"]), "appearances: must be distinct"),
    (dict(appearances=["red"], motions=["up"]), "motions: appearances x motions must give at least 2"),
    (dict(groups=2), "groups: must be 3 to 10000"),
    (dict(speed=[1.0, 0.5]), "speed: must be"),
    (dict(object_size=[0.3]), "object_size: must be"),
    (dict(illumination=1.5), "illumination: must be in"),
    (dict(codec="H264x"), "codec: must be a four-character"),
])
def test_config_validate(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SynthConfig(**kwargs).validate()
    with pytest.raises(PipelineError, match="synth." + message.split(":")[0]):
        generate(SynthConfig(**kwargs), Path("/nonexistent/never-written"))


@pytest.mark.parametrize("codec, tolerance", [("FFV1", 0.0), ("MJPG", 6.0)])
def test_codecs(tmp_path, codec, tolerance):
    cfg = SynthConfig.tiny(codec=codec, groups=3, clips_per_group=1, frames=6, write_flow=False)
    generate(cfg, tmp_path)
    frames = decode(tmp_path / "videos/RedUp/v_RedUp_g01_c01.avi")
    expected = render_clip(cfg, 0, 1, 1).frames
    assert frames.shape == expected.shape
    assert np.abs(frames.astype(int) - expected).mean() <= tolerance
    assert not (tmp_path / "flow_gt").exists()


class _SilentWriter:
    """cv2.VideoWriter on a full disk: opens, takes every frame, writes nothing, says nothing."""

    def __init__(self, path, *args, **kwargs):
        Path(path).write_bytes(b"")

    def isOpened(self):
        return True

    def set(self, *args):
        return True

    def write(self, frame):
        pass

    def release(self):
        pass


@pytest.mark.parametrize("free, error", [(0, "disk full"), (1 << 40, "decodes to 0 of its 20 frames")])
def test_a_video_opencv_failed_to_write_never_gets_its_name_and_the_rerun_writes_it(tmp_path, monkeypatch,
                                                                                    free, error):
    import importlib
    from types import SimpleNamespace

    from p3dbase.errors import P3DError

    gen = importlib.import_module("pipeline.synth.generate")  # the module, not the function of that name

    shim = SimpleNamespace(**{name: getattr(cv2, name) for name in dir(cv2) if not name.startswith("__")})
    shim.VideoWriter = _SilentWriter
    monkeypatch.setattr(gen, "cv2", shim)
    monkeypatch.setattr(gen.shutil, "disk_usage", lambda path: SimpleNamespace(free=free))
    root = tmp_path / "s"
    with pytest.raises(P3DError, match=error) as err:
        generate(SynthConfig.tiny(), root)
    assert "\n" not in str(err.value)
    assert not list(root.rglob("*.avi")) and not list(root.rglob(".*.tmp-*"))
    monkeypatch.undo()
    summary = generate(SynthConfig.tiny(), root)
    assert summary.generated == 24 and all(len(decode(v)) == 20 for v in root.rglob("*.avi"))
    empty = sorted(root.rglob("*.avi"))[0]
    empty.write_bytes(b"")  # what a version that did not read videos back left on a full disk
    assert generate(SynthConfig.tiny(), root).generated == 1 and len(decode(empty)) == 20


def test_companions_delete_what_a_killed_run_left_and_refuse_a_second_writer(tmp_path, monkeypatch):
    from p3dbase.lock import try_lock
    from pipeline.synth import companions

    for name, value in dict(FRAME_SIZE=32, ASLAN_CLASSES_PER_SPLIT=2, ASLAN_CLIPS_PER_CLASS=2, ASLAN_FRAMES=6,
                            ASLAN_SHORT_FRAMES=3, ANET_VIDEOS={"training": 4, "validation": 2, "testing": 1},
                            ANET_SEGMENT=4, SCENE_VIDEOS=2, SCENE_FRAMES=6).items():
        monkeypatch.setattr(companions, name, value)
    killed = tmp_path / ".scenes.tmp-otherhost-123-0"  # what atomic_path leaves when its writer is killed
    (killed / "RedUp").mkdir(parents=True)
    (killed / "RedUp/half.avi").write_bytes(b"x")
    companions.generate_companions(tmp_path)
    assert not killed.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["activitynet", "aslan", "scenes"]
    with try_lock(tmp_path / companions.LOCK) as holder:
        assert holder is None
        with pytest.raises(PipelineError, match=r"the companions are being written by process \d+"):
            companions.generate_companions(tmp_path)


def test_the_synth_stage_keeps_its_own_log_and_refuses_a_file_as_root(tmp_path, capsys):
    from pipeline.cli import main

    repo = Path(__file__).resolve().parents[2]
    root = tmp_path / "s"
    args = ["synth", "--config", str(repo / "configs/tiny.toml"), "--set", f"dataset.root={root}",
            "--set", "synth.groups=3", "--set", "synth.clips_per_group=1", "--set", "synth.frames=4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    log = (root / "synth.log").read_text(encoding="utf-8").splitlines()
    assert log[0].startswith("==== ") and log[0].endswith(" ".join(["python -m pipeline", *args[:3]]) + " --set "
                                                           + " --set ".join(args[4::2]))
    assert out.strip() in log and "\r" not in "".join(log) and log[-1].startswith("==== ended after")
    assert main([*args, "--set", "synth.frames=5"]) == 2  # other settings without --force: refused
    log = (root / "synth.log").read_text(encoding="utf-8").splitlines()
    assert log[-2].startswith(f"error: {root} holds SynthActions made with other settings (synth.frames)")
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    assert main([*args[:3], "--set", f"dataset.root={tmp_path / 'file'}"]) == 2
    assert capsys.readouterr().err == f"error: dataset.root {tmp_path / 'file'} is a file: name the folder " \
                                      "SynthActions is written to\n"
