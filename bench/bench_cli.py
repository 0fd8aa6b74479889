"""How a bench script starts and ends. What goes wrong with its input (a path, a store, a setting) is
one line and exit status 2, as `python -m pipeline` prints it, and counts are checked by argparse; a
bug in the bench itself still shows its traceback."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # without the editable install or PYTHONPATH=. (the bare GPU machine)
    sys.path.append(str(REPO))

from p3dbase.errors import P3DError, refusal  # noqa: E402 (after the path above)


def run(main: Callable[[], Any]) -> None:
    """`main()`, its int result the exit status; our errors and the system's refusals one line."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except P3DError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a --dir that is a file, a --cache under a missing folder
        print(f"error: {refusal(e)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= `low` (0 clips divided by zero, 2 frames made no window)."""
    def parse(text: str) -> int:
        value = int(text)  # argparse names the argument when this raises
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    parse.__name__ = f"whole number >= {low}"
    return parse
