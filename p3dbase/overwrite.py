"""The one rule for a command's output files: an existing file is never replaced unless asked (--force);
and the one way a command makes its output folder (`output_folder`).

`export`, `features` and the other commands that write where the user points them ask here before
any work, so a second run cannot silently replace the first run's result, and a folder that cannot
be written is one line before an hour of work, not a traceback after it.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from p3dbase.errors import P3DError, brief, refusal, shown


class OutputExistsError(P3DError):
    """An output file is already there and --force was not given."""


def refuse_overwrite(paths: Iterable[Path | str], force: bool, *, other: str = "choose another --out") -> None:
    """OutputExistsError naming the existing `paths` (up to 3) unless `force`; a folder where a file is to
    be written is refused even with `force` (replacing it would delete a whole tree)."""
    paths = [Path(p) for p in paths]
    folders = [p for p in paths if p.is_dir()]
    if folders:
        raise OutputExistsError(f"{shown(folders[0])} is a folder, but a file is to be written there: {other}")
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing and not force:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise OutputExistsError(f"would overwrite {', '.join(shown(p) for p in existing[:3])}{more}: pass --force to "
                                f"replace, or {other}")


def refuse_file_as_folder(folder: Path | str, what: str) -> Path:
    """`folder` as an output folder to be made: OutputExistsError when it, or a folder above it, is a
    file (making it would be a FileExistsError or NotADirectoryError traceback deep in a stage)."""
    folder = Path(folder)
    for path in (folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                where = "" if path == folder else f" ({brief(path)} above it)"
                raise OutputExistsError(f"{what} {brief(folder)}: a file is in the way{where}, where a folder is to be "
                                        "made: move it away or choose another work_dir / --out")
            break
    return folder


def folder_name_problem(name: str, limit: int = 100) -> str:
    """Why `name` (a setting that becomes one folder: a run, a benchmark) cannot be a folder name of
    its own ("" when it can): `..`, `/` or an absolute path would put the outputs anywhere."""
    if not name or name.startswith(".") or len(name) > limit or not all(c.isalnum() or c in "-_." for c in name):
        # a leading "." made a hidden folder that `ls` and the report's search pass over
        return f"must be a plain folder name of at most {limit} letters, digits, '-', '_', '.' (not first)"
    return ""


class OutputFolderError(P3DError):
    """An output folder that cannot be made or written (permissions, a read-only or full disk)."""


def output_folder(folder: Path | str, what: str) -> Path:
    """Make `what`'s output folder (and those above it) before any work, or say in one line why it
    cannot be: a file in the way (refuse_file_as_folder), no permission, a read-only or full file
    system. An existing folder this process cannot write is refused too, so that a stage does not
    compute for an hour and fail at its first write."""
    folder = refuse_file_as_folder(folder, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputFolderError(f"{what} {brief(folder)} cannot be made: {refusal(e)}: choose another "
                                "work_dir / --out") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputFolderError(f"{what} {brief(folder)} cannot be written: no permission to write there: "
                                "choose another work_dir / --out, or change its permissions")
    return folder
