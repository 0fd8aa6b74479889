"""The store's index: writers that share a store (shards, verify) lose no entry, the latest entry of
a video wins, compaction is safe to repeat, damaged lines are named and skipped."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flow.index import INDEX_DIR, MAIN_FILE, IndexEntry, StoreIndex

REPO = Path(__file__).resolve().parents[2]


def entry(video_id: str, state: str = "done", recorded_ns: int = 0, frames: int = 3, stored_mtime_ns: int = 400
          ) -> IndexEntry:
    return IndexEntry(video_id, state, "digest", 100, 200, 300, stored_mtime_ns, frames, frames - 1, frames, "0.5",
                      recorded_ns, f"/videos/{video_id}.mp4")


def test_entries_round_trip_and_the_latest_wins(tmp_path):
    index = StoreIndex(tmp_path)
    with index.writer() as w:
        w.add(entry("a", recorded_ns=10))
        w.add(entry("b", recorded_ns=10))
        w.flush()
        w.add(entry("a", "damaged", recorded_ns=20))
        w.add(entry("b", "failed", recorded_ns=5))  # older than what is there: loses
    read = index.read()
    assert read.exists and read.problems == []
    assert read.entries == {"a": entry("a", "damaged", recorded_ns=20), "b": entry("b", recorded_ns=10)}
    assert os.listdir(tmp_path / INDEX_DIR) == [MAIN_FILE]  # folded, no lock file left


def test_a_video_id_that_is_not_utf8_round_trips(tmp_path):
    odd = "Cls/caf\udce9"  # a file name's byte 0xE9, as Python carries it
    with StoreIndex(tmp_path).writer() as w:
        w.add(entry(odd, recorded_ns=1))
    assert list(StoreIndex(tmp_path).read().entries) == [odd]


SHARD = """
import sys
from flow.index import IndexEntry, StoreIndex
i, n = int(sys.argv[2]), int(sys.argv[3])
with StoreIndex(sys.argv[1]).writer() as w:
    for k in range(i, 2000, n):
        w.add(IndexEntry(f"v{k:04d}", "done", "d", k, k, k, k, 2, 1, 2, "", 0, ""))
        if k % 97 == 0:
            w.flush()  # many segments, written and folded while the other shards write theirs
"""


def test_shards_writing_at_once_lose_no_entry(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", SHARD, str(tmp_path), str(i), "4"], env=env) for i in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    entries = StoreIndex(tmp_path).read().entries
    assert sorted(entries) == [f"v{k:04d}" for k in range(2000)]
    assert all(e.source_size == int(v[1:]) for v, e in entries.items())
    StoreIndex(tmp_path).compact()
    assert os.listdir(tmp_path / INDEX_DIR) == [MAIN_FILE]


def test_what_a_killed_writer_left_is_folded_or_removed(tmp_path):
    index = StoreIndex(tmp_path)
    with index.writer() as w:
        w.add(entry("a", recorded_ns=1))
    folder = tmp_path / INDEX_DIR
    (folder / "seg-otherhost-999-w0-1.jsonl").write_text(entry("b", recorded_ns=2).line() + "\n")  # whole
    (folder / ".seg-otherhost-999-w0-2.jsonl.tmp-otherhost-999").write_text('["c","do')  # half-written
    (folder / ".writer-otherhost-999-w0.lock").write_text("")  # its lock file, nobody holds it
    assert sorted(index.read().entries) == ["a", "b"]
    index.compact()
    assert os.listdir(folder) == [MAIN_FILE]
    assert sorted(index.read().entries) == ["a", "b"]


def test_damaged_lines_are_named_and_the_others_read(tmp_path):
    index = StoreIndex(tmp_path)
    with index.writer() as w:
        for name in "abcd":
            w.add(entry(name, recorded_ns=1))
    main = tmp_path / INDEX_DIR / MAIN_FILE
    lines = main.read_text().splitlines(keepends=True)
    main.write_text(lines[0] + '["b","done"]\n' + "not json\n" + lines[3][:-9])
    read = index.read()
    assert sorted(read.entries) == ["a"]
    assert [p.split(": ")[0] for p in read.problems] == [f"{main}, line {n}" for n in (2, 3, 4)]


def test_a_video_listed_twice_in_one_file_keeps_its_latest_entry(tmp_path):
    """The first file read is taken whole when it names each video once (a compacted main file);
    one that names a video twice (joined by hand, an older writer) still gives the latest entry."""
    folder = tmp_path / INDEX_DIR
    folder.mkdir()
    main = folder / MAIN_FILE
    main.write_text("".join(e.line() + "\n" for e in [entry("a", recorded_ns=30), entry("b", recorded_ns=1),
                                                       entry("a", "failed", recorded_ns=20)]))
    assert StoreIndex(tmp_path).read().entries == {"a": entry("a", recorded_ns=30), "b": entry("b", recorded_ns=1)}
    main.write_text(entry("a", "failed", recorded_ns=5).line() + '\n["b","lost",1]\n')  # an unknown state
    read = StoreIndex(tmp_path).read()
    assert read.entries == {"a": entry("a", "failed", recorded_ns=5)}
    assert read.problems == [f"{main}, line 2: damaged index entry, skipped (its video is checked from its pack)"]
