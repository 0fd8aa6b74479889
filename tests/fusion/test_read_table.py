"""fusion.report.read_table: the one reader of the CSV tables eval and transfer reports write."""
import math

import pytest

from fusion.errors import FusionError
from fusion.report import read_table

RERUN = "re-run `make eval`"


def test_cells_come_back_as_written_numbers_counts_and_text(tmp_path):
    """Text stays text ("NA", "nan", "1e3" as class names or details), an empty number is NaN (a metric not
    defined), counts are int64, and every column of the header is kept in its order."""
    path = tmp_path / "per_class.csv"
    path.write_text('class,videos,rgb,note\nNA,3,50.5,1e3\nnan,0,,"a, b"\n', encoding="utf-8")
    table = read_table(path, ["class", "videos"], RERUN, numbers=["rgb"], counts=["videos"])
    assert list(table.columns) == ["class", "videos", "rgb", "note"]
    assert table["class"].tolist() == ["NA", "nan"] and table["note"].tolist() == ["1e3", "a, b"]
    assert table["videos"].dtype == "int64" and table["videos"].tolist() == [3, 0]
    assert table["rgb"].dtype == "float64" and table["rgb"][0] == 50.5 and math.isnan(table["rgb"][1])


def test_a_header_only_table_has_its_columns_and_kinds(tmp_path):
    path = tmp_path / "excluded.csv"
    path.write_text("video_id,reason,videos\n", encoding="utf-8")
    table = read_table(path, ["video_id", "reason"], RERUN, counts=["videos"])
    assert len(table) == 0 and list(table.columns) == ["video_id", "reason", "videos"]
    assert table["videos"].dtype == "int64"


@pytest.mark.parametrize("text,says", [
    ("", "not the table a report wrote (no column 'class', 'videos'; its header: '')"),
    ("class,videos\nrun,1\nwalk\n", "cut short or edited (line 3 has 1 of the header's 2 fields)"),
    ("class,videos\nrun,1", "cut short (no line end after its last row)"),
    ("class,videos\nrun,-2\n", "line 2: videos must be a whole number, got '-2'"),
    ("class,videos,rgb\nrun,2,-inf\n", "line 2: rgb must be a number or empty, got '-inf'"),
    ("class,videos,videos\nrun,2,2\n", "not the table a report wrote (column 'videos' twice)"),
    ('class,videos\n"run,2\n', "cut short or edited (line 2 has 1 of the header's 2 fields)"),  # open quote
])
def test_a_table_that_is_not_what_the_report_wrote_is_one_line_naming_file_line_and_column(tmp_path, text, says):
    path = tmp_path / "per_class.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FusionError) as e:
        read_table(path, ["class", "videos"], RERUN, numbers=["rgb"], counts=["videos"])
    assert str(e.value) == f"{path}: {says}: {RERUN}"


def test_an_unreadable_table_names_the_file(tmp_path):
    with pytest.raises(FusionError, match=r"results\.csv: cannot read it \(.*\): re-run `make eval`$"):
        read_table(tmp_path / "results.csv", ["method"], RERUN)
    (tmp_path / "bad.csv").write_bytes(b"method\n\xff\xfe\n")
    with pytest.raises(FusionError, match=r"bad\.csv: cannot read it \('utf-8' codec"):
        read_table(tmp_path / "bad.csv", ["method"], RERUN)
