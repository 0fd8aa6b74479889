"""Building many small objects at once (a listing of 650,000 videos, an index of as many entries).

CPython's cyclic garbage collector runs after every so many new container objects and, in its oldest
generation, walks every tracked object: while a reader builds hundreds of thousands of records, it
walks them again and again (a quarter of the CPU time of listing 650,000 Kinetics clips,
bench/scale.py). Records and tuples form no reference cycles, so nothing is lost by pausing it.
"""
from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def no_cycle_collection() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block (reference counting still frees everything
    that is not in a cycle); it runs again as before afterwards, also when the block raises."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
