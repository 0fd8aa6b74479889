"""The one rule for output files: refused when present unless forced; a folder is never replaced."""
from __future__ import annotations

import pytest

from p3dbase.errors import P3DError
from p3dbase.overwrite import OutputExistsError, refuse_overwrite


def test_existing_outputs_are_refused_unless_forced_and_folders_always(tmp_path):
    new, old = tmp_path / "new.npz", tmp_path / "old.npz"
    old.write_text("x")
    refuse_overwrite([new], force=False)
    with pytest.raises(OutputExistsError, match=r"^would overwrite .*old.npz: pass --force to replace, or choose "
                                                r"another --out$") as err:
        refuse_overwrite([new, old], force=False)
    assert isinstance(err.value, P3DError)
    refuse_overwrite([new, old], force=True)
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(OutputExistsError, match=r"dir.npz is a folder, but a file is to be written there"):
        refuse_overwrite([tmp_path / "dir.npz"], force=True)
    many = [tmp_path / f"{i}.txt" for i in range(5)]
    for p in many:
        p.write_text("x")
    with pytest.raises(OutputExistsError, match=r"4.txt|2.txt and 2 more"):
        refuse_overwrite(many, force=False)
