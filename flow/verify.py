"""`python -m pipeline verify`: read every finished video of a store and check it, in parallel.

A re-run of the flow stage trusts the store's index and reads no image; this is the explicit check
that reads them all: each pack's structure and the CRC32 of every image (mmaction folders: every
JPEG against the checksums the flow stage kept beside them, decoded and of one size), and what the
flow stage compares: that every video the index lists as done is stored, and holds the counts and was
made from the source the index records (a pack of another video copied over it is caught here, not
only by the next `flow` run). Damaged videos are listed in `<store>/verify-report.csv` and marked
"damaged" in the index, so that the next `flow` run redoes them (a store that cannot be written, e.g.
on a read-only share, is checked all the same and the result only printed). Reading is I/O-bound on a cold disk;
one process per core keeps the decoding and checksums off the critical path.
"""
from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import joblib

from flow.errors import FlowError
from flow.index import IndexEntry, Origin, entry_stat
from flow.store import REDO_DAMAGED, StaleVideoError, Store, open_store
from p3dbase.atomic import write_bytes
from p3dbase.cluster import local_processes
from p3dbase.errors import P3DError, refusal, shown
from p3dbase.progress import progress_bar

REPORT_FILE = "verify-report.csv"
CHUNK = 64  # videos per task: one task per video would spend more on scheduling than on small videos


@dataclass
class VerifyReport:
    videos: int
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (video id, what is wrong)
    report: Path | None = None

    def __str__(self) -> str:
        lines = [f"verify: {self.videos} videos read, {len(self.damaged)} damaged"]
        lines += [f"verify: damaged {video_id}: {problem}" for video_id, problem in self.damaged[:10]]
        if len(self.damaged) > 10:
            lines.append(f"verify: ... and {len(self.damaged) - 10} more")
        if self.damaged and self.report is not None:
            lines.append(f"verify: listed in {shown(self.report)}; the next `flow` run redoes them")
        elif self.damaged:
            lines.append("verify: not (all) recorded in the store: re-run verify where it can be written; the next "
                         "`flow` run redoes the videos marked in its index")
        return "\n".join(lines)


PENDING = "left to the running flow"  # check_video: a video of the old settings beside a running `flow`


def check_video(store: Store, video_id: str, entry: IndexEntry | None, *, stat: tuple[int, int] | None,
                flow_running: bool = False) -> str:
    """What is wrong with one video ("" when nothing): it is stored (when the index's `entry` lists it
    as done), it opens (made for this video and under store.json's settings), every image matches its
    checksum (and decodes, for JPEG folders), and it holds the entry's counts; one that does not record
    its video id (older stores) must have been made from the entry's source (a stored video that does
    not say what it was made from, from before the index, is not compared). `stat`: the stored video's
    (size, mtime_ns) as the caller took it (flow.index.entry_stat). With `flow_running` (a
    `flow` run writing the store), a video of the old settings is one that run has not redone yet, not
    damage: PENDING."""
    try:
        path = store.path(video_id)
        if entry is not None and not os.path.lexists(path):
            return f"the index lists it as done, but {shown(path)} is gone"
        with store.open(video_id) as video:
            video.verify()
            counts = (video.num_frames, video.num_flows)
            made_from = video.origin
    except StaleVideoError as e:
        return PENDING if flow_running else str(e)
    except FlowError as e:  # what to do is verify's own report line (the next `flow` redoes it)
        return str(e).removesuffix(f": {REDO_DAMAGED}")
    if entry is None:
        return ""
    differs = f"holds {counts[0]} frames and {counts[1]} flow images, the index says {entry.frames} and {entry.flows}"
    # `open` refused a video made for another id or under other settings than store.json's. One that
    # records its id and differs from its index entry was redone after the entry (a run stopped before
    # it indexed it): the entry is behind, not the video, and the next `flow` run, seeing another file
    # than the entry's, compares it with its source. An entry of this very file with other counts is
    # wrong itself (edited, damaged), and its counts would reach the manifest and mmaction's lists.
    if isinstance(made_from, dict) and "video_id" in made_from:
        same_file = stat == (entry.stored_size, entry.stored_mtime_ns)
        return f"{differs} (for this very file)" if same_file and counts != (entry.frames, entry.flows) else ""
    if counts != (entry.frames, entry.flows):  # older videos: counts and source against the entry
        return differs
    if made_from is None:
        return ""
    origin = Origin.from_dict(made_from)
    if origin is None:
        return f"{shown(path)} does not say what it was made from (its record is damaged)"
    if origin != entry.origin:  # older videos record no id: another video's source tells a copy
        return (f"{shown(path)} was made from a source of {_made(origin)}, the index records {_made(entry.origin)} "
                f"({entry.source or 'its source'}): a copy of another video's?")
    return ""


def _made(origin: Origin) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(origin.mtime_ns // 10**9))
    return f"{origin.size} bytes modified {when}"


def _check_chunk(root: Path, chunk: Sequence[tuple[str, IndexEntry | None]], flow_running: bool = False
                 ) -> list[tuple[str, str, tuple[int, int] | None]]:
    """(video id, what is wrong, the stat of what was checked) of each video."""
    store = open_store(root)
    results = []
    for video_id, entry in chunk:
        try:
            stat = entry_stat(store.path(video_id))
        except FlowError:
            stat = None
        results.append((video_id, check_video(store, video_id, entry, stat=stat, flow_running=flow_running), stat))
    return results


def verify_store(root: Path | str, *, jobs: int = 0) -> VerifyReport:
    """Check every finished video of the store at `root` with `jobs` processes (0: one per core);
    print and return the report."""
    store = open_store(Path(root).resolve(), purpose="verify")
    read = store.index.read()
    for problem in read.problems:
        print(f"verify: {problem}", flush=True)
    entries = read.entries
    # The stored videos, and those the index lists as done: a pack deleted or replaced by a folder is
    # missed by a walk of the store, and a `flow` run would not redo it while the index says done.
    ids = sorted(set(store.video_ids()).union(v for v, e in entries.items() if e.state == "done"))
    todo = [(v, e if (e := entries.get(v)) is not None and e.state == "done" else None) for v in ids]
    chunks = [todo[k: k + CHUNK] for k in range(0, len(todo), CHUNK)]
    workers = min(local_processes(jobs, "flow.jobs"), max(len(chunks), 1))
    flow_running = bool(store.running_flows())  # its videos of the old settings are its work, not damage
    damaged: list[tuple[str, str]] = []
    pending = 0  # videos of the old settings a running `flow` has yet to redo (not damage; not checked)
    checked: dict[str, tuple[int, int] | None] = {}  # the stat of each damaged video as verify read it
    with progress_bar(total=len(todo), desc="verify", unit="video") as bar:
        results = (joblib.Parallel(n_jobs=workers, return_as="generator_unordered")(
            joblib.delayed(_check_chunk)(store.root, chunk, flow_running) for chunk in chunks) if workers > 1
            else (_check_chunk(store.root, chunk, flow_running) for chunk in chunks))
        for result in results:
            pending += sum(problem == PENDING for _, problem, _ in result)
            found = [(v, problem, stat) for v, problem, stat in result if problem and problem != PENDING]
            damaged += [(v, problem) for v, problem, _ in found]
            checked.update((v, stat) for v, _, stat in found)
            bar.update(len(result))
            bar.set_postfix(damaged=len(damaged), refresh=False)
    damaged.sort()
    if pending:  # a shard or a subset run may never redo them: said, not passed in silence
        print(f"verify: {pending} video(s) of the store's old settings are left to the running `flow` run (not "
              "checked; if that run does not redo them, the next `flow` run does)", flush=True)
    # A store on a read-only share is still checked; its result is printed, not recorded.
    writable = os.access(store.root, os.W_OK | os.X_OK)
    report = VerifyReport(len(todo), damaged, store.root / REPORT_FILE if writable else None)
    if not writable:
        print(f"verify: {shown(store.root)} cannot be written here: the result is printed only (no {REPORT_FILE}, "
              "nothing marked for the next `flow` run)", flush=True)
    else:
        # Each part on its own: a report path taken by a folder, a read-only index. The check stands.
        for part, record in (("the damaged marks in its index", lambda: _mark(store, report, entries, checked)),
                             (REPORT_FILE, lambda: _write_report(report))):
            try:
                record()
            except (OSError, P3DError) as e:
                why = refusal(e) if isinstance(e, OSError) else str(e)
                print(f"verify: {part} could not be written in the store ({why}): the result is printed", flush=True)
                report.report = None
    print(report, flush=True)
    return report


def _mark(store: Store, report: VerifyReport, entries: dict[str, IndexEntry],
          checked: dict[str, tuple[int, int] | None]) -> None:
    """A damaged mark in the index for each damaged video: the next `flow` run redoes it."""
    if not report.damaged:
        return
    with store.index.writer() as index:
        for video_id, problem in report.damaged:
            old = entries.get(video_id)
            entry = old or IndexEntry(video_id, "damaged")
            stat = checked.get(video_id)
            if stat is not None:  # the file found damaged: its mark outranks a "done" of it (flow.index._merge)
                entry = entry._replace(stored_size=stat[0], stored_mtime_ns=stat[1])
            index.add(entry._replace(state="damaged", note=shown(" ".join(problem.split())), recorded_ns=0),
                      after=old.recorded_ns if old is not None else 0)


def _write_report(report: VerifyReport) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["video_id", "problem"])
    writer.writerows((shown(v), shown(" ".join(p.split()))) for v, p in report.damaged)
    write_bytes(report.report, buf.getvalue().encode())
