"""The flow stage's manifest: one CSV row per video of the run (or shard), sorted by video id."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from flow.errors import FlowError


@dataclass
class VideoResult:
    """What happened to one video. `status` is "done" or "failed"; `seconds` is empty for a video
    found complete in the store with no earlier manifest row telling how long it took."""

    video_id: str
    path: str
    status: str
    frames: int = 0  # RGB frames stored (decoded)
    flow_pairs: int = 0  # flow images stored: frames - 1
    declared_frames: int = 0  # the container's frame count (0: it does not say)
    seconds: str = ""
    error: str = ""


COLUMNS = [f.name for f in fields(VideoResult)]


def manifest_name(shard: tuple[int, int]) -> str:
    """manifest.csv for a whole run; manifest-shard-I-of-N.csv for one shard of N (0-based I), so
    that shards running at once on a shared disk never write the same file."""
    i, n = shard
    return "manifest.csv" if n == 1 else f"manifest-shard-{i}-of-{n}.csv"


def format_manifest(rows: list[VideoResult]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r.video_id):
        writer.writerow(asdict(row))
    return buf.getvalue().encode()


def write_manifest(path: Path, rows: list[VideoResult]) -> None:
    """Atomically (temp + rename), and not at all when the content is unchanged."""
    data = format_manifest(rows)
    if path.exists() and path.read_bytes() == data:
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_manifest(path: Path) -> dict[str, VideoResult]:
    """Rows by video id; {} when the file does not exist."""
    if not path.exists():
        return {}
    rows: dict[str, VideoResult] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not set(COLUMNS) <= set(reader.fieldnames):
            raise FlowError(f"{path}: not a flow manifest (expected columns {', '.join(COLUMNS)})")
        for line, rec in enumerate(reader, start=2):
            try:
                rows[rec["video_id"]] = VideoResult(
                    rec["video_id"], rec["path"], rec["status"], int(rec["frames"] or 0),
                    int(rec["flow_pairs"] or 0), int(rec["declared_frames"] or 0), rec["seconds"],
                    rec["error"])
            except ValueError as e:
                raise FlowError(f"{path}, line {line}: {e}") from None
    return rows
