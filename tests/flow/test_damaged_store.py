"""A store damaged on disk, found by the probe: a pack whose meta (the JSON tail no checksum covers)
holds impossible numbers, an index line from a clock running ahead or with a field of the wrong type,
an index or store description that is not what it should be, a pack deleted, replaced by a folder or
by another video's. Each is one FlowError naming the file, or a video `verify` lists and the next
`flow` run redoes; never a traceback, a huge allocation or damage hidden for good."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from flow.errors import FlowError
from flow.index import FUTURE_SLACK_NS, INDEX_DIR, MAIN_FILE, IndexEntry, StoreIndex
from flow.stage import FlowJob, run_flow
from flow.store import MAX_SIDE, create_store, open_store
from flow.verify import verify_store
from tests.builders import make_toy_store, moving_square, write_video

_FOOTER = struct.Struct("<Q8s")


def edit_meta(pack: Path, edit) -> None:
    """Rewrite a pack's JSON meta through `edit(meta)`, keeping its images, index, checksums and footer."""
    data = pack.read_bytes()
    length, magic = _FOOTER.unpack(data[-16:])
    meta = json.loads(data[-16 - length:-16])
    edit(meta)
    body = json.dumps(meta).encode()
    pack.write_bytes(data[:-16 - length] + body + _FOOTER.pack(len(body), magic))


def _set(**values):
    return lambda meta: meta.update(values)


@pytest.mark.parametrize("edit, why", [
    (_set(num_frames=10**12), "num_frames 1000000000000 and num_flows"),  # was a MemoryError
    (lambda m: m.update(num_frames=float("inf")), "num_frames is inf, not an integer"),  # 1e400: OverflowError
    (_set(index_offset=-100), "an index of 7 rows at byte -100 does not fit"),  # was "Invalid argument", no file
    (_set(height=100000, width=100000), f"frames of 100000x100000 (each side must be 1..{MAX_SIDE})"),  # 447 GiB
    (_set(num_frames=-3), "num_frames -3"),  # was an IndexError in training
    (_set(num_frames=True), "num_frames is True, not an integer"),
    (_set(height=12.0), "height is 12.0, not an integer"),
    (_set(num_flows=2), "num_frames 4 and num_flows 2"),
    (lambda m: m.update(crc32_offset=m["crc32_offset"] + 10**6), "checksums of 7 images"),
    (lambda m: m.update(index_offset=m["index_offset"] - 1000), "its index points outside the images"),
    (_set(codec="webp"), "codec 'webp' is none of jpeg, png, raw"),  # was "does not decode as webp"
])
def test_a_pack_meta_with_impossible_numbers_is_not_a_complete_pack(tmp_path, edit, why):
    make_toy_store(tmp_path, ["A"], 1, frames=4, height=12, width=16)
    store = open_store(tmp_path)
    edit_meta(store.path("A/v_A_00"), edit)
    with pytest.raises(FlowError) as caught:
        store.open("A/v_A_00")
    message = str(caught.value)
    assert message.startswith(f"video A/v_A_00: {store.path('A/v_A_00')} is not a complete pack file")
    assert why in message and "\n" not in message
    assert [v for v, _ in verify_store(tmp_path, jobs=1).damaged] == ["A/v_A_00"]


def test_a_meta_that_is_no_object_and_a_link_loop_are_named(tmp_path):
    """A meta that is a JSON list said "list indices must be integers or slices, not str"; a pack that is
    a loop of links said the video is "not in the store"."""
    make_toy_store(tmp_path, ["A"], 2, frames=4, height=12, width=16)
    store = open_store(tmp_path)
    pack = store.path("A/v_A_00")
    data = pack.read_bytes()
    length, magic = _FOOTER.unpack(data[-16:])
    pack.write_bytes(data[:-16 - length] + b"[1, 2]" + _FOOTER.pack(6, magic))
    with pytest.raises(FlowError, match=r"not a complete pack file \(meta: a JSON list, not an object\)"):
        store.open("A/v_A_00")
    loop = store.path("A/v_A_01")
    loop.unlink()
    loop.symlink_to(loop)
    with pytest.raises(FlowError, match=r"v_A_01\.pack is a symbolic link that leads to no file \(a loop of links"):
        store.open("A/v_A_01")


def test_verify_decodes_the_first_images_at_the_size_the_meta_states(tmp_path):
    make_toy_store(tmp_path, ["A"], 1, frames=4, height=12, width=16)
    edit_meta(open_store(tmp_path).path("A/v_A_00"), _set(height=14))  # plausible, but not the images' size
    report = verify_store(tmp_path, jobs=1)
    assert [v for v, _ in report.damaged] == ["A/v_A_00"] and "frame 0" in report.damaged[0][1]


def test_a_writer_refuses_frames_no_reader_would_open(tmp_path):
    store = create_store(tmp_path, codec="raw")
    with pytest.raises(FlowError, match=f"a store holds frames of 1..{MAX_SIDE} pixels a side"):
        with store.writer("v") as w:
            w.add_rgb(np.zeros((1, 1, MAX_SIDE + 1, 3), np.uint8))


def test_a_frame_size_memory_cannot_hold_is_one_line(tmp_path, monkeypatch):
    make_toy_store(tmp_path, ["A"], 1, frames=4, height=12, width=16)

    def no_memory(*args, **kwargs):
        raise MemoryError

    with open_store(tmp_path).open("A/v_A_00") as video:
        monkeypatch.setattr(np, "empty", no_memory)
        with pytest.raises(FlowError, match=r"video A/v_A_00: \[4, 12, 16, 3\] images take .* GiB, more than"):
            video.rgb(range(4))


@pytest.mark.parametrize("field, value", [("layout", "zip"), ("codec", "webp")])
def test_an_unknown_layout_or_codec_in_store_json_names_it(tmp_path, field, value):
    create_store(tmp_path)
    path = tmp_path / "store.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(FlowError, match=f"^{path}: .*got '{value}'"):
        open_store(tmp_path)


# The index.

def entry(video_id: str, state: str = "done", recorded_ns: int = 0, stored_mtime_ns: int = 400) -> IndexEntry:
    return IndexEntry(video_id, state, "digest", 100, 200, 300, stored_mtime_ns, 3, 2, 3, "0.5", recorded_ns, "")


def test_a_damaged_mark_outranks_done_of_the_same_file_whatever_the_clocks(tmp_path):
    ahead = time.time_ns() + 3600 * 10**9  # a host whose clock runs an hour ahead indexed it
    with StoreIndex(tmp_path).writer() as w:
        w.add(entry("a", recorded_ns=ahead))
        w.add(entry("b", recorded_ns=ahead))
    with StoreIndex(tmp_path).writer() as w:
        w.add(entry("a", "damaged", recorded_ns=1))  # verify, on a clock behind: the same file is damaged
        w.add(entry("b", "damaged", recorded_ns=1, stored_mtime_ns=999))  # another file, older: loses
    entries = StoreIndex(tmp_path).read().entries
    assert entries["a"].state == "damaged" and entries["b"].state == "done"


def test_a_record_outranks_the_entry_it_was_made_after_even_from_a_clock_ahead(tmp_path):
    ahead = time.time_ns() + 3600 * 10**9
    with StoreIndex(tmp_path).writer() as w:
        w.add(entry("a", recorded_ns=ahead))
    with StoreIndex(tmp_path).writer() as w:
        w.add(entry("a", stored_mtime_ns=777), after=ahead)  # redone after reading that entry
    assert StoreIndex(tmp_path).read().entries["a"].stored_mtime_ns == 777


def test_an_entry_from_the_future_or_with_a_wrong_type_is_a_damaged_line(tmp_path):
    folder = tmp_path / INDEX_DIR
    folder.mkdir()
    far = time.time_ns() + FUTURE_SLACK_NS + 3600 * 10**9
    lines = [entry("a").line(), entry("b", recorded_ns=far).line(),
             '["c","done","zz",1,2,3,4,5,6,7,"x",99999999999999999999,"",""]',
             json.dumps(["d", "done", "digest", 1, 2, 3, 4, "x", 2, 3, "", 1, "", ""]),  # frames "x"
             json.dumps(["e", "done", "digest", 1, 2, 3, 4, 3.0, 2, 3, "", 1, "", ""]),  # a float
             json.dumps(["f", "done", "digest", 1, 2, 3, 4, True, 2, 3, "", 1, "", ""]),  # a bool
             json.dumps(["g", "done", "digest", 1, 2, 3, 4, -3, 2, 3, "", 1, "", ""])]  # a negative count
    (folder / MAIN_FILE).write_text("\n".join(lines) + "\n")
    read = StoreIndex(tmp_path).read()
    assert list(read.entries) == ["a"]
    assert [p.split(": ", 1)[1] for p in read.problems[:2]] == [
        "index entry recorded in the future (a clock far ahead?), skipped (its video is checked from its pack)"] * 2
    assert [p.split(": ")[0] for p in read.problems] == [f"{folder / MAIN_FILE}, line {n}" for n in range(2, 8)]


def test_an_index_that_is_a_file_or_holds_folders_says_what_to_do(tmp_path):
    index = StoreIndex(tmp_path)
    (tmp_path / INDEX_DIR).write_text("")
    with pytest.raises(FlowError, match="index: not a folder, where the store keeps its index .* move it out"):
        index.read()
    with pytest.raises(FlowError, match="not a folder"):
        with index.writer() as w:
            w.add(entry("a"))
    (tmp_path / INDEX_DIR).unlink()
    for name in (MAIN_FILE, "seg-host-1-w0-1.jsonl"):
        (tmp_path / INDEX_DIR / name).mkdir(parents=True)
        with pytest.raises(FlowError, match=f"{name}: a folder, where the store's index keeps a file: move it out"):
            index.read()
        (tmp_path / INDEX_DIR / name).rmdir()
        # A FIFO: reading it waited for a writer for ever (every `flow` and `verify` hung).
        os.mkfifo(tmp_path / INDEX_DIR / name)
        with pytest.raises(FlowError, match=f"{name}: not a regular file, where the store's index keeps a file"):
            index.read()
        (tmp_path / INDEX_DIR / name).unlink()


def test_json_nested_past_the_recursion_limit_is_a_damaged_record_not_a_crash(tmp_path):
    """json recurses per nesting level: RecursionError, caught nowhere, ended `flow`, `verify` and
    `train` with a traceback where a damaged index line, pack or store.json is one line."""
    deep = "[" * 100_000 + "]" * 100_000
    store = create_store(tmp_path / "s", codec="png")
    rgb = np.zeros((2, 8, 8, 3), np.uint8)
    store.write_video("A/v", rgb, np.full((1, 8, 8, 2), 128, np.uint8))
    folder = tmp_path / "s" / INDEX_DIR
    folder.mkdir(exist_ok=True)
    (folder / MAIN_FILE).write_text(deep + "\n")
    read = StoreIndex(tmp_path / "s").read()
    assert read.entries == {} and read.problems[0].endswith("line 1: damaged index entry, skipped (its video is "
                                                            "checked from its pack)")
    pack = store.path("A/v")
    data = pack.read_bytes()
    meta = deep.encode()  # the footer right: the meta is read and parsed
    pack.write_bytes(data[:8] + meta + struct.pack("<Q8s", len(meta), b"P3DPACK1"))
    with pytest.raises(FlowError, match=r"video A/v: .*v\.pack is not a complete pack file \(maximum recursion"):
        store.open("A/v")
    (tmp_path / "s" / "store.json").write_text(deep)
    with pytest.raises(FlowError, match=r"store\.json: cannot read store description: maximum recursion"):
        open_store(tmp_path / "s")


# What a flow run and verify make of it, end to end on tiny videos.

@pytest.fixture
def finished(tmp_path, fast_cfg):
    folder = tmp_path / "videos"
    for k, name in enumerate("abc"):
        write_video(folder / f"{name}.avi", moving_square(6, seed=k))  # same counts: only the origin tells them apart
    jobs = [FlowJob(f"Cls/{p.stem}", p) for p in sorted(folder.iterdir())]
    out = tmp_path / "flow"
    run_flow(jobs, out, fast_cfg)
    return jobs, out


def _flip(path: Path, offset: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # bit rot: size and mtime unchanged


def test_damage_under_an_entry_from_a_clock_ahead_is_found_and_redone(finished, fast_cfg):
    jobs, out = finished
    main = out / INDEX_DIR / MAIN_FILE
    rows = [json.loads(line) for line in main.read_text().splitlines()]
    for row in rows:
        row[11] = time.time_ns() + 3600 * 10**9  # indexed by a host an hour ahead
    main.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
    _flip(out / "Cls" / "a.pack")
    assert [v for v, _ in verify_store(out, jobs=1).damaged] == ["Cls/a"]
    assert run_flow(jobs, out, fast_cfg).computed == 1  # was: 0 computed, on every run
    assert verify_store(out, jobs=1).damaged == []
    again = run_flow(jobs, out, fast_cfg)
    assert (again.computed, again.skipped) == (0, 3)


def test_a_pack_rechecked_after_an_entry_from_a_clock_ahead_is_indexed_afresh(finished, fast_cfg, capsys):
    jobs, out = finished
    main = out / INDEX_DIR / MAIN_FILE
    rows = [json.loads(line) for line in main.read_text().splitlines()]
    rows[0][11] = time.time_ns() + 3600 * 10**9
    main.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
    pack = out / "Cls" / "a.pack"
    pack.write_bytes(pack.read_bytes())  # the same bytes, a new mtime: the index disagrees
    capsys.readouterr()
    assert run_flow(jobs, out, fast_cfg).computed == 0
    assert "checking it" in capsys.readouterr().out
    run_flow(jobs, out, fast_cfg)
    assert "checking it" not in capsys.readouterr().out  # the fresh entry won


def test_verify_lists_an_indexed_video_whose_pack_is_gone_or_a_folder(finished, fast_cfg):
    jobs, out = finished
    (out / "Cls" / "a.pack").unlink()
    (out / "Cls" / "b.pack").unlink()
    (out / "Cls" / "b.pack").mkdir()
    report = verify_store(out, jobs=1)
    assert report.videos == 3
    assert [v for v, _ in report.damaged] == ["Cls/a", "Cls/b"]
    assert "the index lists it as done, but" in report.damaged[0][1] and "is gone" in report.damaged[0][1]
    assert "is a folder" in report.damaged[1][1]
    summary = run_flow(jobs, out, fast_cfg)
    assert summary.computed == 1 and [v for v, _ in summary.failures] == ["Cls/b"]
    assert "is a folder where its pack belongs" in summary.failures[0][1]


def _deadline(seconds: int = 30):
    """A TimeoutError instead of a hang: a FIFO opened for reading waits for a writer for ever."""
    import signal

    def expired(signum, frame):
        raise TimeoutError(f"still waiting after {seconds} s")
    signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)


def test_a_fifo_where_a_pack_belongs_is_listed_not_waited_on(finished, fast_cfg):
    """A FIFO in a pack's place kept `verify` at 0% for ever (and `flow`, and `show-flow`): the pack was
    opened for reading before its type was looked at."""
    import signal

    jobs, out = finished
    (out / "Cls" / "a.pack").unlink()
    os.mkfifo(out / "Cls" / "a.pack")
    _deadline()
    try:
        report = verify_store(out, jobs=1)
        assert [v for v, _ in report.damaged] == ["Cls/a"]
        assert "a.pack is not a regular file (a FIFO, socket or device), not a pack" in report.damaged[0][1]
        summary = run_flow(jobs, out, fast_cfg)
    finally:
        signal.alarm(0)
    assert summary.computed == 1 and not summary.failures  # redone: its pack renamed over the FIFO
    assert (out / "Cls" / "a.pack").is_file()


def test_verify_prints_what_it_found_when_it_cannot_record_it(finished, capsys):
    """A folder where verify-report.csv belongs stopped verify with one error line after the whole check:
    the damaged videos were neither printed nor marked."""
    jobs, out = finished
    (out / "Cls" / "a.pack").unlink()
    (out / "verify-report.csv").mkdir()
    report = verify_store(out, jobs=1)
    assert [v for v, _ in report.damaged] == ["Cls/a"] and report.report is None
    said = capsys.readouterr().out
    assert "verify: verify-report.csv could not be written in the store (" in said
    assert StoreIndex(out).read().entries["Cls/a"].state == "damaged"  # marked all the same: the next flow redoes it
    assert "verify: damaged Cls/a: the index lists it as done" in said
    assert "verify: not (all) recorded in the store: re-run verify where it can be written" in said


def test_a_fifo_where_store_json_belongs_is_replaced_by_a_forced_run_not_waited_on(tmp_path):
    """`flow --force` passed over open_store's refusal of a FIFO store.json, then create_store read it
    (`path.read_bytes()`) and waited for a writer for ever."""
    import signal

    root = tmp_path / "s"
    root.mkdir()
    os.mkfifo(root / "store.json")
    with pytest.raises(FlowError, match=r"store\.json: cannot read store description: not a regular file"):
        open_store(root)
    with pytest.raises(FlowError, match=r"store\.json: cannot read store description: not a regular file"):
        create_store(root)  # without --force: the same line
    _deadline()
    try:
        create_store(root, overwrite=True)  # --force
    finally:
        signal.alarm(0)
    assert (root / "store.json").is_file() and open_store(root).layout == "packed"


def test_verify_lists_a_pack_copied_over_another_videos(finished, fast_cfg):
    jobs, out = finished
    shutil.copyfile(out / "Cls" / "c.pack", out / "Cls" / "b.pack")  # whole and valid, but c's
    report = verify_store(out, jobs=1)
    assert [v for v, _ in report.damaged] == ["Cls/b"]
    # The pack records the video it was made for: named, whatever the two sources' sizes and times
    # (a rawframes tree unpacked from a tar gives every folder one size and one mtime, and the copy passed).
    assert report.damaged[0][1] == (f"video Cls/b: {out / 'Cls' / 'b.pack'} holds the frames of video Cls/c (a copy "
                                    "of its stored video?): re-run `make flow` to redo it")
    with pytest.raises(FlowError, match="holds the frames of video Cls/c"):  # train and eval open it so too
        open_store(out).open("Cls/b")
    assert run_flow(jobs, out, fast_cfg).computed == 1
    assert verify_store(out, jobs=1).damaged == []


def test_packs_of_other_settings_than_store_json_are_refused_where_they_are_read(finished, fast_cfg, capsys):
    """`flow --force` with a new bound rewrites store.json, then redoes video after video; stopped after
    the first (here: given only it), the store held packs of both bounds, and `train` read them all under
    the new bound without a word, while `verify` listed the one new pack and passed the stale ones."""
    jobs, out = finished
    new = dataclasses.replace(fast_cfg, bound=fast_cfg.bound * 2)
    run_flow(jobs[:1], out, new, force=True)
    store = open_store(out)
    with store.open("Cls/a"):
        pass  # the redone one opens
    with pytest.raises(FlowError, match=r"^video Cls/b: .*b\.pack was made with other settings than the store's "
                                        r"store\.json \(a `flow --force` run with new settings was stopped"):
        store.open("Cls/b")  # what train, eval and features read through
    # While a `flow` run writes the store, its videos of the old settings are its work ahead, not damage:
    # verify beside a running `flow --force` listed every video it had not reached yet.
    from flow.store import LOCK_SUFFIX, RUNNING_PREFIX
    from p3dbase.lock import hold_lock

    with hold_lock(out / f"{RUNNING_PREFIX}host-1{LOCK_SUFFIX}", holder="host-1"):
        assert verify_store(out, jobs=1).damaged == []
    assert "verify: 2 video(s) of the store's old settings are left to the running `flow` run" in \
        capsys.readouterr().out
    assert [v for v, _ in verify_store(out, jobs=1).damaged] == ["Cls/b", "Cls/c"]
    capsys.readouterr()
    assert run_flow(jobs, out, new).computed == 2
    assert verify_store(out, jobs=1).damaged == []


def test_a_video_redone_before_its_index_entry_was_written_is_kept(finished, fast_cfg, capsys):
    """A --force run with new settings stopped after redoing a video but before indexing it: the entry
    still names the old settings. The re-run redid it ("made with other settings") though its pack was
    new; it now reads the pack's own record, keeps it, and `verify` finds nothing wrong with it."""
    jobs, out = finished
    old_index = {p.name: p.read_bytes() for p in (out / INDEX_DIR).iterdir()}
    new = dataclasses.replace(fast_cfg, bound=fast_cfg.bound * 2)
    run_flow(jobs[:1], out, new, force=True)
    for path in (out / INDEX_DIR).iterdir():  # the index as the stopped run left it: Cls/a not recorded
        path.unlink()
    for name, data in old_index.items():
        (out / INDEX_DIR / name).write_bytes(data)
    assert verify_store(out, jobs=1).damaged[0][0] == "Cls/b"  # the stale ones, not Cls/a
    capsys.readouterr()
    summary = run_flow(jobs, out, new)
    assert (summary.computed, summary.skipped) == (2, 1)
    assert "video Cls/a" not in capsys.readouterr().out


def test_a_finished_video_whose_source_is_gone_is_kept(finished, fast_cfg, capsys):
    """docs/flow.md allows deleting a rawframes tree once imported; a re-run then redid every video, each
    failed ("not a folder of frames") and its failure deleted the stored video: 6 packs became 0. The
    stored video now stays done, from its index entry or, without one, from its own record."""
    jobs, out = finished
    jobs[1].path.unlink()
    packed = (out / "Cls" / "b.pack").read_bytes()
    capsys.readouterr()
    summary = run_flow(jobs, out, fast_cfg)
    assert (summary.computed, summary.skipped, summary.failed) == (0, 3, 0)
    assert f"flow: video Cls/b: its source {jobs[1].path} is gone: the stored video is kept" in capsys.readouterr().out
    assert (out / "Cls" / "b.pack").read_bytes() == packed
    shutil.rmtree(out / INDEX_DIR)  # no entry: the pack's own record says it is finished under these settings
    summary = run_flow(jobs, out, fast_cfg)
    assert (summary.computed, summary.skipped, summary.failed) == (0, 3, 0)
    assert StoreIndex(out).read().entries["Cls/b"].state == "done"  # indexed again
    assert verify_store(out, jobs=1).damaged == []
    # Under other settings there is nothing to keep: the video fails (its source is gone), as before.
    summary = run_flow(jobs, out, dataclasses.replace(fast_cfg, bound=fast_cfg.bound * 2), force=True)
    assert (summary.computed, summary.failed) == (2, 1) and not (out / "Cls" / "b.pack").exists()


def test_a_damaged_video_whose_source_is_gone_fails_and_says_why(finished, fast_cfg):
    """`verify` marked it damaged, then its source went: it was "kept" as done (its pack opens: `open`
    reads no image), and `verify` went on promising that `flow` would redo it."""
    jobs, out = finished
    with open_store(out).open("Cls/b") as v:
        offset = int(v._rgb_index[0][0]) + 20
    _flip(out / "Cls" / "b.pack", offset)
    assert [v for v, _ in verify_store(out, jobs=1).damaged] == ["Cls/b"]
    jobs[1].path.unlink()
    summary = run_flow(jobs, out, fast_cfg)
    assert (summary.computed, summary.skipped) == (0, 2)
    ((video, error),) = summary.failures
    assert video == "Cls/b" and error.startswith("`verify` found it damaged (video Cls/b: frame 0 in ")
    assert error.endswith(f"is corrupt (CRC32 mismatch)) and its source {jobs[1].path} is gone: it cannot be "
                          "redone; bring the source back and re-run")
    assert (out / "Cls" / "b.pack").is_file()  # left as it is, still marked damaged
    with pytest.raises(FlowError, match="1 of 3 videos failed"):
        run_flow(jobs, out, fast_cfg, strict=True)


def test_an_index_entry_of_the_very_pack_with_other_counts_is_listed_and_redone(finished, fast_cfg):
    """An entry edited (or damaged) to 40 frames of a pack that holds 6, its stat the pack's own: verify
    passed it, and its counts went to manifest.csv and mmaction's lists (img_00007..40, which no folder
    holds). It is listed, and the next `flow` redoes it and writes the true counts."""
    jobs, out = finished
    main = out / INDEX_DIR / MAIN_FILE
    lines = [json.loads(line) for line in main.read_text().splitlines()]
    for line in lines:
        if line[0] == "Cls/a":
            line[7], line[8] = 40, 39  # frames, flows
    main.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = verify_store(out, jobs=1)
    assert report.damaged == [("Cls/a", "holds 6 frames and 5 flow images, the index says 40 and 39 (for this "
                                        "very file)")]
    assert run_flow(jobs, out, fast_cfg).computed == 1
    rows = {r.split(",")[0]: r for r in (out / "manifest.csv").read_text().splitlines()[1:]}
    assert ",6,5," in rows["Cls/a"]


def test_verify_passes_a_video_redone_from_a_changed_source_before_it_was_indexed(finished, fast_cfg):
    """Its entry names the old source and counts; the pack records its own id: the entry is behind, not
    the pack. `verify` listed it ("holds 9 frames ..., the index says 6") and `flow` recomputed it."""
    jobs, out = finished
    old_index = {p.name: p.read_bytes() for p in (out / INDEX_DIR).iterdir()}
    write_video(jobs[0].path, moving_square(9, seed=5))  # the source changed: 9 frames, not 6
    run_flow(jobs[:1], out, fast_cfg)
    for path in (out / INDEX_DIR).iterdir():
        path.unlink()
    for name, data in old_index.items():
        (out / INDEX_DIR / name).write_bytes(data)  # as a run stopped before indexing it leaves the index
    assert verify_store(out, jobs=1).damaged == []
    assert run_flow(jobs, out, fast_cfg).computed == 0


def test_an_index_line_with_a_string_count_is_named_and_its_pack_kept(finished, fast_cfg, capsys):
    jobs, out = finished
    main = out / INDEX_DIR / MAIN_FILE
    rows = [json.loads(line) for line in main.read_text().splitlines()]
    rows[0][7] = "x"
    main.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
    capsys.readouterr()
    summary = run_flow(jobs, out, fast_cfg)
    assert f"{main}, line 1: damaged index entry, skipped" in capsys.readouterr().out
    assert (summary.computed, summary.skipped) == (0, 3)  # re-indexed from its pack, not recomputed
    assert verify_store(out, jobs=1).damaged == []


def test_a_damaged_index_line_is_named_once_then_left_out(finished, fast_cfg, capsys):
    jobs, out = finished
    segment = out / INDEX_DIR / "seg-otherhost-1-w0-1.jsonl"  # a bogus line, alone in a segment
    segment.write_text('["Cls/a","done","zz",1,2,3,4,5,6,7,"x",99999999999999999999,"",""]\n')
    capsys.readouterr()
    assert run_flow(jobs, out, fast_cfg).computed == 0
    assert f"{segment}, line 1: index entry recorded in the future" in capsys.readouterr().out
    assert run_flow(jobs, out, fast_cfg).computed == 0
    assert "index entry" not in capsys.readouterr().out and not segment.exists()
