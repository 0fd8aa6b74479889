"""The flow manifest: the rows csv.writer would write (also for odd file names), read back as written."""
from __future__ import annotations

import csv
import io
import itertools

from flow.manifest import COLUMNS, VideoResult, format_manifest, read_manifest, write_manifest
from p3dbase.errors import utf8_text

ODD = ["plain", "a,b", 'say "hi"', "line\nbreak", "cr\rhere", "", " space ", "tab\there", "caf\u00e9",
       "bad\udcffbyte"]


def _by_csv(rows: list[VideoResult]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows([r.video_id, r.path, r.status, r.frames, r.flow_pairs, r.declared_frames, r.seconds, r.error]
                     for r in sorted(rows, key=lambda r: r.video_id))
    return utf8_text(buf.getvalue()).encode()


def test_rows_are_written_as_csv_writer_writes_them():
    rows = [VideoResult(f"C/v{k}_{name}", f"/videos/{path}.mp4", "failed" if k % 2 else "done", k, k - 1, k + 1,
                        "" if k % 3 else "1.5", error)
            for k, (name, path, error) in enumerate(itertools.product(ODD, ODD[:4], ODD[:5]))]
    assert format_manifest(rows) == _by_csv(rows)


def test_a_manifest_reads_back_as_written(tmp_path):
    rows = [VideoResult("C/a,b", "/v/a,b.mp4", "done", 10, 9, 10, "0.5"),
            VideoResult('C/q"uote', "/v/q.mp4", "failed", error="cannot decode:\nframe 3"),
            VideoResult("C/plain", "/v/plain.mp4", "done", 3, 2, 0, "")]
    write_manifest(tmp_path / "manifest.csv", rows)
    back = read_manifest(tmp_path / "manifest.csv")
    assert sorted(back) == sorted(r.video_id for r in rows)
    assert back['C/q"uote'].error == "cannot decode:\nframe 3" and back["C/a,b"].frames == 10
