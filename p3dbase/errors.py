"""The one root of every user-facing error, and the one way to print a path.

Each package's error (`flow.errors.FlowError`, `streams.errors.StreamsError`,
`fusion.errors.FusionError`, `pipeline.errors.PipelineError`) derives from `P3DError`, so an error
raised deep in `flow` reaches the CLI unchanged: the CLI catches `P3DError` and prints one line, and
no package translates another's errors. The system's refusals (`OSError`: a full disk mid-run, a
file that vanished) that no stage turned into a P3DError are printed as one line too (`refusal`).
"""
import errno
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path


class P3DError(Exception):
    """A user-facing mistake: a missing or broken file, video or store, or a wrong value.

    The message names the file, line, video or key and says what is wrong; the CLI prints it as
    `error: <message>` with exit status 2 and no traceback.
    """


class SettingError(P3DError):
    """A setting (a config key, a `--set` value, a device) that cannot be used; the message names the key."""


def shown(text: object) -> str:
    """`text` (a path, a message) as printable UTF-8 on one line: bytes of a non-UTF-8 file name (which
    Python carries as lone surrogates) become `\\xNN`, so that printing it or writing it to a UTF-8
    file cannot fail, and control characters are escaped (`\\n`, `\\x1b`): a
    file name holding a newline split one-line messages in two, and an escape sequence reached the
    terminal."""
    text = utf8_text(text)
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def utf8_text(text: object) -> str:
    """`text` as text that UTF-8 can encode, lines kept (a whole CSV file): bytes of a non-UTF-8 file
    name become `\\xNN`. `shown` is this for a one-line message."""
    text = str(text)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no undecodable byte: a JSON "\ud800"
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


# C0, DEL and C1, as text_problem refuses them in names: a valid id or class name is shown as it is.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def brief(text: object, limit: int = 300) -> str:
    """`shown(text)` for a one-line message, its middle cut when longer than `limit` characters (a
    path that is too long for the file system, a 10 MB setting): the start and end name it."""
    text = shown(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit * 2 // 3]}...{text[-limit // 4:]} ({len(text):,} characters)"


def text_problem(text: str) -> str:
    """Why `text` (a name, a label) cannot go as it is into a video id, a class name, a one-line
    message or a line of a CSV or UTF-8 report ("" when it can)."""
    if text.isprintable():  # at C speed, the common case: no control character, no lone surrogate
        return ""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: a JSON escape, or a file name's undecodable byte
        return "is not valid UTF-8 text"
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text):  # C0, DEL and C1: terminal escapes among them
        return "holds a control character"
    return ""


def excerpt(text: str, limit: int = 80) -> str:
    """`text` quoted for a one-line message (its repr: control characters show), cut at `limit`
    characters with its length noted: a damaged file's 100 kB line must not become a 100 kB message."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


# A path that exists but is neither a file nor a folder: reading a FIFO would block, a device never end.
NOT_REGULAR = "not a regular file (a FIFO, socket or device)"


class NotRegularFileError(OSError):
    """`open_regular` found a FIFO, socket or device (a folder is IsADirectoryError); strerror says so."""


def open_regular(path: Path | str) -> int:
    """A read-only descriptor of the regular file `path`, opened without blocking: a plain open of a FIFO
    waits for a writer for ever (a `flow`, `verify` or `show-flow` run hung at 0%). IsADirectoryError
    for a folder, NotRegularFileError (strerror NOT_REGULAR) for anything else that is not a file; the
    caller closes the descriptor."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK changes nothing for a regular file
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if stat.S_ISREG(mode):
        os.set_blocking(fd, True)  # as a plain open: a file system may answer EAGAIN to non-blocking reads
        return fd
    os.close(fd)
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "a folder", str(path))
    raise NotRegularFileError(errno.EINVAL, NOT_REGULAR, str(path))


def read_regular(path: Path | str) -> bytes:
    """The bytes of the regular file `path` (`open_regular`'s refusals as theirs)."""
    with os.fdopen(open_regular(path), "rb") as file:
        return file.read()


def path_is(check: Callable[[Path], bool], path: Path) -> bool:
    """`check(path)` (Path.is_dir, is_file, exists), False where the system refuses to look (a name too
    long for the file system raises there): such an entry then fails on its own, with the system's
    reason, where it is opened or written, and the others go on."""
    try:
        return check(path)
    except OSError:
        return False


def file_problem(path: Path, noun: str = "file") -> str:
    """Why `path` cannot be read as a `noun` ("video file", ...), "" when it can: no such one, a folder,
    not a regular file, or no permission for this user (root reads anything; os.access answers for
    the process)."""
    if path.is_file():
        return "" if os.access(path, os.R_OK) else "cannot be read: no permission"
    if path.is_dir():
        return f"a folder, not a {noun}"
    if not path.exists() and path.is_symlink():  # exists() follows the link
        return f"a symbolic link that leads to no {noun} (a loop of links, or its target is gone)"
    return NOT_REGULAR if path.exists() else f"no such {noun}"


# What the system's refusals mean to someone choosing where a stage reads and writes.
_REFUSALS = {errno.EACCES: "no permission", errno.EPERM: "not permitted", errno.EROFS: "the file system is read-only",
             errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
             errno.ENAMETOOLONG: "the name is too long", errno.ENOTDIR: "a file is where a folder should be",
             errno.EMFILE: "too many open files (raise `ulimit -n`)"}


def refusal(err: OSError) -> str:
    """An OSError as one line: its file(s) and what the refusal means, e.g.
    "/data/out: the file system is read-only"."""
    why = _REFUSALS.get(err.errno, err.strerror or type(err).__name__)
    files = " -> ".join(brief(f) for f in (err.filename, err.filename2) if f is not None)
    return f"{files}: {why}" if files else why
