"""`python -m pipeline verify`: read every finished video of a store and check it, in parallel.

A re-run of the flow stage trusts the store's index and reads no image; this is the explicit check
that reads them all: each pack's structure and the CRC32 of every image (mmaction folders: every
JPEG against the checksums the flow stage kept beside them, and decoded), and the counts against
the index. Damaged videos are listed in `<store>/verify-report.csv` and marked "damaged" in the
index, so that the next `flow` run redoes them (a store that cannot be written, e.g. on a read-only
share, is checked all the same and the result only printed). Reading is I/O-bound on a cold disk;
one process per core keeps the decoding and checksums off the critical path.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import joblib

from flow.errors import FlowError
from flow.index import IndexEntry
from flow.store import Store, open_store
from p3dbase.atomic import write_bytes
from p3dbase.cluster import local_processes
from p3dbase.errors import shown
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
            lines.append("verify: not recorded in the store, which cannot be written here: re-run verify where "
                         "it can, and the next `flow` run redoes them")
        return "\n".join(lines)


def check_video(store: Store, video_id: str, expected: tuple[int, int] | None) -> str:
    """What is wrong with one stored video ("" when nothing): it opens, every image matches its
    checksum (and decodes, for JPEG folders), its counts are the index's `expected` (frames, flows)."""
    try:
        with store.open(video_id) as video:
            video.verify()
            counts = (video.num_frames, video.num_flows)
    except FlowError as e:
        return str(e)
    if expected is not None and counts != expected:
        return f"holds {counts[0]} frames and {counts[1]} flow images, the index says {expected[0]} and {expected[1]}"
    return ""


def _check_chunk(root: Path, chunk: Sequence[tuple[str, tuple[int, int] | None]]) -> list[tuple[str, str]]:
    store = open_store(root)
    return [(video_id, check_video(store, video_id, expected)) for video_id, expected in chunk]


def verify_store(root: Path | str, *, jobs: int = 0) -> VerifyReport:
    """Check every finished video of the store at `root` with `jobs` processes (0: one per core);
    print and return the report."""
    store = open_store(Path(root).resolve(), purpose="verify")
    read = store.index.read()
    for problem in read.problems:
        print(f"verify: {problem}", flush=True)
    entries = read.entries
    ids = store.video_ids()
    todo = [(v, (e.frames, e.flows) if (e := entries.get(v)) is not None and e.state == "done" else None)
            for v in ids]
    chunks = [todo[k: k + CHUNK] for k in range(0, len(todo), CHUNK)]
    workers = min(local_processes(jobs, "flow.jobs"), max(len(chunks), 1))
    damaged: list[tuple[str, str]] = []
    with progress_bar(total=len(todo), desc="verify", unit="video") as bar:
        results = (joblib.Parallel(n_jobs=workers, return_as="generator_unordered")(
            joblib.delayed(_check_chunk)(store.root, chunk) for chunk in chunks) if workers > 1
            else (_check_chunk(store.root, chunk) for chunk in chunks))
        for result in results:
            damaged += [(v, problem) for v, problem in result if problem]
            bar.update(len(result))
            bar.set_postfix(damaged=len(damaged), refresh=False)
    damaged.sort()
    # A store on a read-only share is still checked; its result is printed, not recorded.
    writable = os.access(store.root, os.W_OK | os.X_OK)
    report = VerifyReport(len(todo), damaged, store.root / REPORT_FILE if writable else None)
    if not writable:
        print(f"verify: {shown(store.root)} cannot be written here: the result is printed only (no {REPORT_FILE}, "
              "nothing marked for the next `flow` run)", flush=True)
    else:
        _write_report(report)
    if damaged and writable:
        with store.index.writer() as index:
            for video_id, problem in damaged:
                entry = entries.get(video_id) or IndexEntry(video_id, "damaged")
                index.add(entry._replace(state="damaged", note=shown(" ".join(problem.split())), recorded_ns=0))
    print(report, flush=True)
    return report


def _write_report(report: VerifyReport) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["video_id", "problem"])
    writer.writerows((shown(v), shown(" ".join(p.split()))) for v, p in report.damaged)
    write_bytes(report.report, buf.getvalue().encode())
