"""Hostile inputs to the user tools (predict, features, export, import-weights, show-flow): a broken item
fails alone with one line, an odd option or output is one line before any work, and nothing a killed
run left behind stops the same command from being run again."""
from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from flow.errors import FlowError
from flow.visualise import check_png_path
from fusion import extract
from fusion.errors import FusionError
from fusion.inputs import gather_inputs
from fusion.predict import Prediction, format_predictions
from p3dbase.overwrite import OutputExistsError
from pipeline import cli
from streams import export
from streams.errors import StreamsError
from streams.importers import import_weights, read_classes
from streams.p3d import build_model
from tests.builders import official_layers, randomise, save_tiny_checkpoint, write_avi, write_caffemodel
from tests.pipeline.test_tools_cli import FAST, run

TINY_SYNTH = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"

COMMON = [*FAST, "--set", "eval.jobs=1", "--no-progress"]


def test_a_symbolic_link_loop_among_the_videos_stops_nothing(tmp_path):
    """A self-referencing link in a videos folder was an OSError ("Too many levels of symbolic links")
    that ended predict and features before any video was read."""
    folder = tmp_path / "videos"
    write_avi(folder / "good.avi", frames=6)
    (folder / "loop").symlink_to("loop")
    assert [v.video_id for v in gather_inputs([folder])[0]] == ["good"]


def test_a_list_entry_too_long_for_the_file_system_fails_alone(tmp_path, capsys):
    """One 5,000-character line of a list file ended the whole batch (OSError: File name too long);
    now that video fails with a short line and the others are scored."""
    rgb = save_tiny_checkpoint(tmp_path / "rgb.pt", "rgb")
    write_avi(tmp_path / "good.avi", frames=6)
    listing = tmp_path / "videos.txt"
    listing.write_text(f"good.avi\n{'y' * 5000}.avi\n")
    assert [v.video_id for v in gather_inputs([listing])[0]] == ["good", "y" * 5000]
    assert cli.main(["predict", str(listing), "--rgb", str(rgb), *COMMON]) == 1
    out = capsys.readouterr().out
    (error,) = [line for line in out.splitlines() if "error:" in line]
    assert "the name is too long" in error and len(error) < 400 and "good.avi (6 frames)" in out


def test_a_timeline_whose_file_names_would_be_too_long_fails_that_video_only(tmp_path, capsys):
    """A video whose name fits the file system but whose `<id>.timeline.csv` does not: `Path.exists`
    raised in the clash check and no video was scored; now that video fails alone, before it is
    computed. One whose timeline names fit but whose temporary names (p3dbase.atomic, ~30 bytes more)
    did not is written whole: a temporary name is cut to fit."""
    rgb = save_tiny_checkpoint(tmp_path / "rgb.pt", "rgb")
    videos = tmp_path / "videos"
    write_avi(videos / "good.avi", frames=6)
    shutil.copy(videos / "good.avi", videos / f"{'x' * 250}.avi")  # x..x.timeline.json: 264 bytes
    shutil.copy(videos / "good.avi", videos / f"{'y' * 240}.avi")  # y..y.timeline.json: 254 bytes
    out = tmp_path / "timeline"
    assert cli.main(["predict", str(videos), "--rgb", str(rgb), "--timeline", "--out", str(out), *COMMON]) == 1
    text = capsys.readouterr().out
    assert "its timeline file" in text and "rename the video" in text and ".tmp-" not in text
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{stem}.timeline.{kind}" for stem in ("good", "y" * 240)
                                                           for kind in ("csv", "json", "png"))


def test_predict_refuses_timeline_options_without_timeline(tmp_path):
    """--stride 4 without --timeline was silently ignored: one table, no file, no word."""
    for extra in (["--stride", "4"], ["--out", str(tmp_path / "t")], ["--force"]):
        with pytest.raises(FusionError, match="give --timeline too"):
            run(["predict", str(tmp_path / "v.avi"), "--rgb", str(tmp_path / "rgb.pt"), *extra])
    assert not (tmp_path / "t").exists()


def test_a_name_with_a_newline_stays_on_its_line_of_the_table():
    text = format_predictions([Prediction("clips/a\nb.avi", 5, {"rgb": [("Red", 0.9)]}),
                               Prediction("c\rd.avi", 0, error="c\rd.avi: empty file")])
    assert text.splitlines()[0] == "clips/a\\nb.avi (5 frames)" and "c\\rd.avi\n  error:" in text


def test_features_whose_parts_another_run_removed_still_ends_well(tmp_path, monkeypatch, capsys):
    """Two runs on one --out: the first to finish removes `<out>.parts`; the other's own removal was
    then a FileNotFoundError and exit status 2 after its output was written."""
    rgb = save_tiny_checkpoint(tmp_path / "rgb.pt", "rgb")
    write_avi(tmp_path / "good.avi", frames=6)
    out = tmp_path / "f.npz"
    write = extract._write

    def write_then_the_other_run_cleans_up(out, *args):
        write(out, *args)
        shutil.rmtree(out.with_name(out.name + ".parts"))

    monkeypatch.setattr(extract, "_write", write_then_the_other_run_cleans_up)
    assert cli.main(["features", str(tmp_path / "good.avi"), "--rgb", str(rgb), "--out", str(out), *COMMON]) == 0
    assert out.is_file() and "error" not in capsys.readouterr().err


def test_an_interrupted_export_leaves_nothing_that_blocks_its_rerun(tmp_path, monkeypatch):
    """Ctrl-C after the TorchScript file was written and before the ONNX one: the re-run of the same
    command was refused ("would overwrite ...rgb.logits.pt"), and the file had no .json beside it."""
    rgb = save_tiny_checkpoint(tmp_path / "rgb.pt", "rgb")
    out = tmp_path / "export"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export_checkpoint(rgb, out, ("torchscript", "onnx"))
    assert list(out.iterdir()) == []
    monkeypatch.undo()
    written = export.export_checkpoint(rgb, out, ("torchscript",))
    assert [p.name for p in written] == ["rgb.logits.pt", "rgb.logits.json"]


def _caffemodel(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = randomise(build_model("p3d_tiny", 3, 3))
    return write_caffemodel(tmp_path / "p3d.caffemodel", official_layers(net, fc_name="fc_kinetics"))


def test_import_weights_never_replaces_a_checkpoint_unless_forced(tmp_path):
    """import-weights wrote over an existing --out (a trained last.pt, say) without a word; a folder as
    --out was an OSError naming the hidden temporary file."""
    caffemodel = _caffemodel(tmp_path)
    trained = save_tiny_checkpoint(tmp_path / "last.pt", "rgb")
    before = trained.read_bytes()
    with pytest.raises(OutputExistsError, match="would overwrite .*last.pt.*--force"):
        run(["import-weights", str(caffemodel), "--out", str(trained)])
    assert trained.read_bytes() == before
    with pytest.raises(OutputExistsError, match="is a folder"):
        import_weights(caffemodel, tmp_path, force=True)
    run(["import-weights", str(caffemodel), "--out", str(trained), "--force"])
    assert trained.read_bytes() != before


def test_a_class_list_with_a_control_character_is_refused_at_import(tmp_path):
    """The import wrote a checkpoint that every reader then refused ("class 1 'b\\x01' holds a
    control character"): the class list is where the mistake is."""
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\x01\nc\n")
    with pytest.raises(StreamsError, match=r"classes.txt, line 2: class name 'b\\x01' holds a control character"):
        read_classes(classes, 3)


def test_a_fifo_as_class_list_is_refused_not_read_for_ever(tmp_path):
    fifo = tmp_path / "classes.txt"
    os.mkfifo(fifo)
    stop, refused = time.monotonic() + 3, threading.Event()

    def feed_a_blocked_reader():  # the old code blocks in open(): answer it, so that the test ends
        while time.monotonic() < stop and not refused.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                time.sleep(0.05)
                continue
            os.write(fd, b"a\nb\nc\n")
            os.close(fd)
            return

    feeder = threading.Thread(target=feed_a_blocked_reader, daemon=True)
    feeder.start()
    try:
        with pytest.raises(StreamsError, match="not a regular file"):
            read_classes(fifo, 3)
    finally:
        refused.set()
        feeder.join()


def test_show_flow_out_that_is_a_folder_is_named_as_such(tmp_path):
    """It was "<folder>/.x.png.tmp-host-pid-0 -> x.png: Is a directory", after the picture was drawn."""
    (tmp_path / "x.png").mkdir()
    with pytest.raises(FlowError, match=r"x.png: is a folder, but a PNG picture is to be written there"):
        check_png_path(tmp_path / "x.png", "--out")


def test_predict_refuses_frames_larger_than_max_pixels_in_one_line(tmp_path, capsys):
    """predict and per-video features decoded at full size whatever [flow] max_pixels said (a frame folder of
    8000x8000 images ran TV-L1 for minutes); now that video fails in one line naming the limit, as in the
    flow stage and `features --stride`."""
    rgb = save_tiny_checkpoint(tmp_path / "rgb.pt", "rgb")
    write_avi(tmp_path / "good.avi", frames=6, width=40, height=30)
    write_avi(tmp_path / "big.avi", frames=6, width=64, height=48)
    limit = ["--set", "flow.max_pixels=2000"]  # 40x30 = 1,200 px fits, 64x48 = 3,072 does not
    assert cli.main(["predict", str(tmp_path / "good.avi"), str(tmp_path / "big.avi"), "--rgb", str(rgb),
                     *COMMON, *limit]) == 1
    out = capsys.readouterr().out
    (error,) = [line for line in out.splitlines() if "error:" in line]
    assert "big.avi" in error and "max_pixels = 2,000" in error and "good.avi (6 frames)" in out


def test_snippet_features_of_a_video_whose_files_would_be_too_long_fail_that_video_only(tmp_path, capsys):
    """`features --stride`: a video whose name fits the file system but whose `<id>.npy` temporary name and
    failure record do not ended the batch (exit 2, the other videos left pending) with a message naming
    the hidden temporary file; now that video fails with one line and the others are written."""
    rgb = save_tiny_checkpoint(tmp_path / "rgb.pt", "rgb")
    videos = tmp_path / "videos"
    write_avi(videos / "good.avi", frames=6)
    shutil.copy(videos / "good.avi", videos / f"{'x' * 251}.avi")  # x..x.json: 256 bytes
    shutil.copy(videos / "good.avi", videos / f"{'y' * 245}.avi")  # y..y.json: 250 bytes, its temporary name more
    out = tmp_path / "snippets"
    assert cli.main(["features", str(videos), "--rgb", str(rgb), "--out", str(out), "--stride", "4", *COMMON]) == 1
    text = capsys.readouterr()
    assert "rename the video" in text.out + text.err and ".tmp-" not in text.out + text.err
    for stem in ("good", "y" * 245):
        assert (out / f"{stem}.npy").is_file() and (out / f"{stem}.json").is_file()


def test_a_symbolic_link_loop_in_a_frame_folder_is_passed_over(tmp_path):
    """`flow.rawframes.scan` (the rawframes import, predict and features on frame folders) raised "Too many
    levels of symbolic links" for a link to itself among the images."""
    from flow.rawframes import scan
    from tests.builders import write_rawframes

    folder = write_rawframes(tmp_path / "v", frames=3, flows=2)
    (folder / "loop").symlink_to("loop")
    video = scan(folder)
    assert len(video.frames) == 3


def test_a_set_value_with_a_newline_is_named_on_one_line(capsys):
    """`--set "eval.clips=$(printf '1\\n2')"` printed its error over two lines."""
    assert cli.main(["config", "--set", "eval.clips=1\n2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --set 'eval.clips=1\\n2': ")


def test_show_flow_frames_are_bounded(tmp_path):
    """`show-flow --frames 1000000` was bounded by the video alone: thousands of subplots, minutes of drawing."""
    from pipeline.config import load_config
    from pipeline.errors import PipelineError
    from pipeline.stages import show_flow_stage

    cfg = load_config(None, [f"work_dir={str(tmp_path)!r}"])
    for frames in (0, 51, 1_000_000):
        with pytest.raises(PipelineError, match=rf"--frames must be 1 to 50 \(.*\), got {frames}$"):
            show_flow_stage(cfg, "any", frames=frames)


def test_a_temporary_name_never_outgrows_the_file_system():
    """p3dbase.atomic writes under `.<name>.tmp-<host>-<pid>...`, ~30 bytes more than the name: a name of
    230-255 bytes could not be written at all. Its temporary name is cut to fit, its start and a hash
    of the whole kept (two long names that share their start stay apart)."""
    from p3dbase.atomic import NAME_MAX, temp_name, temp_prefix

    for stem in ("a" * 250, "é" * 124 + "b", "a" * 200):
        path = Path("/out") / f"{stem}.npy"
        for kw in ({}, {"unique": True, "keep_suffix": True}):
            tmp = temp_name(path, **kw)
            assert len(os.fsencode(tmp.name)) <= NAME_MAX and tmp.name.endswith(".npy") == bool(kw)
            assert tmp.name.startswith(temp_prefix(path))  # what a re-run looks for, whichever writer it was
    long1, long2 = temp_name(Path("a" * 250 + "1")).name, temp_name(Path("a" * 250 + "2")).name
    assert long1[:170] == long2[:170] and long1 != long2
    assert temp_name(Path("short.npy")).name.startswith(".short.npy.tmp-")  # names that fit are as before


def test_a_link_loop_given_as_a_file_is_named_as_such(tmp_path):
    """`predict loop.avi`, where loop.avi is a link to itself, said "no such video file"."""
    from p3dbase.errors import file_problem

    (tmp_path / "loop.avi").symlink_to("loop.avi")
    (tmp_path / "gone.avi").symlink_to("nothing.avi")
    for name in ("loop.avi", "gone.avi"):
        assert file_problem(tmp_path / name, "video file") == ("a symbolic link that leads to no video file (a loop "
                                                              "of links, or its target is gone)")
    assert file_problem(tmp_path / "absent.avi", "video file") == "no such video file"


@pytest.mark.parametrize("stride", [[], ["--stride", "4"]])
def test_features_no_progress_draws_no_bar_at_all(tmp_path, capsys, stride):
    """`--no-progress` reached only the per-frame bars of --stride: the bar over the videos still wrote
    its plain lines to stderr (a log, a pipe), with the .npz output and with --stride alike."""
    rgb = save_tiny_checkpoint(tmp_path / "rgb.pt", "rgb")
    write_avi(tmp_path / "videos" / "a.avi", frames=20)
    out = tmp_path / ("snippets" if stride else "f.npz")
    argv = ["features", str(tmp_path / "videos"), "--rgb", str(rgb), "--out", str(out), *stride, *COMMON]
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert capsys.readouterr().err == ""
    shutil.rmtree(out) if out.is_dir() else out.unlink()
    assert cli.main([a for a in argv if a != "--no-progress"]) == 0
    assert "features" in capsys.readouterr().err  # without it, the bar's lines (stderr is no terminal here)


@pytest.mark.parametrize("text", ["{bad", "[]", '{"config": 5}', "\udcff"])
def test_a_damaged_synth_json_is_one_line_and_force_regenerates(tmp_path, capsys, text):
    """synth.json cut or edited: a JSONDecodeError, AttributeError or UnicodeDecodeError traceback."""
    root = tmp_path / "synth"
    root.mkdir()
    (root / "synth.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    tiny = ["--config", str(TINY_SYNTH), "--set", f"dataset.root={root}", "--set", f"work_dir={tmp_path / 'w'}"]
    assert cli.main(["synth", *tiny]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {root / 'synth.json'}: damaged, not the synth.json") and "\n" not in err
    assert cli.main(["synth", *tiny, "--force"]) == 0 and (root / "synth.json").is_file()


def test_synth_refusing_a_foreign_folder_writes_nothing_in_it(tmp_path, capsys):
    """docs/synth.md: such a folder is never written into; the stage's log was, before the refusal."""
    root = tmp_path / "theirs"
    root.mkdir()
    (root / "z").write_text("y")
    assert cli.main(["synth", "--config", str(TINY_SYNTH), "--set", f"dataset.root={root}"]) == 2
    assert "holds no SynthActions" in capsys.readouterr().err
    assert [p.name for p in root.iterdir()] == ["z"]


@pytest.mark.parametrize("setting", ["dataset.root", "work_dir", "flow.rawframes_root"])
def test_a_nul_character_in_a_setting_is_one_line(tmp_path, capsys, setting):
    """A NUL reached open() (ValueError: embedded null byte, a traceback in every stage); `config` took it."""
    for stage in (["synth"], ["config"]):
        assert cli.main([*stage, "--config", str(TINY_SYNTH), "--set", f'{setting}="{tmp_path}/a\\u0000b"']) == 2
        err = capsys.readouterr().err.strip()
        assert "holds a NUL character" in err and err.count("\n") == 0 and setting in err, err

