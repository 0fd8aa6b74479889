"""p3dbase.lock: one holder at a time, the holder named to whoever is turned away, no stale lock file."""
import os
import subprocess
import sys

from p3dbase.lock import hold_lock, try_lock


def test_a_second_taker_is_turned_away_with_the_holders_name(tmp_path):
    path = tmp_path / "sub" / ".video.lock"
    with hold_lock(path, holder="host-123") as other:
        assert other is None and path.read_text() == "host-123\n"
        with try_lock(path) as second:  # another open file description: flock refuses it, as for another process
            assert second == "host-123"
    assert not path.exists()  # let go: the file is gone, so a later taker cannot mistake it for held
    with try_lock(path) as again:
        assert again is None and path.read_text() == f"{os.getpid()}\n"


def test_a_killed_holder_leaves_no_lock(tmp_path):
    path = tmp_path / ".run.lock"
    child = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from p3dbase.lock import hold_lock
with hold_lock({str(path)!r}):
    print("held", flush=True)
    time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with try_lock(path) as other:
            assert other == str(child.pid)
    finally:
        child.kill()
        child.wait()
    with try_lock(path) as other:  # the kernel dropped the dead holder's flock
        assert other is None
