"""refuse_file_as_folder: a stage's output folder with a file in its place, or above it, is one line."""
import pytest

from p3dbase.errors import P3DError
from p3dbase.overwrite import refuse_file_as_folder


def test_a_file_in_the_way_of_an_output_folder_is_named(tmp_path):
    (tmp_path / "work").write_text("a file where work_dir's folder goes")
    with pytest.raises(P3DError, match=r"^the flow store .*/work/flow: a file is in the way \(.*/work above it\)"):
        refuse_file_as_folder(tmp_path / "work" / "flow", "the flow store")
    (tmp_path / "out").write_text("x")
    with pytest.raises(P3DError, match=r"^report .*/out: a file is in the way, where a folder is to be made"):
        refuse_file_as_folder(tmp_path / "out", "report")


def test_folders_that_exist_or_not_yet_pass(tmp_path):
    assert refuse_file_as_folder(tmp_path / "a" / "b", "x") == tmp_path / "a" / "b"
    (tmp_path / "a").mkdir()
    assert refuse_file_as_folder(tmp_path / "a", "x") == tmp_path / "a"
    assert not (tmp_path / "a" / "b").exists()  # nothing is made here
