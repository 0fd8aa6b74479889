import gc

import pytest

from p3dbase.bulk import no_cycle_collection


def test_the_collector_pauses_in_the_block_and_comes_back_as_it_was():
    assert gc.isenabled()
    with no_cycle_collection():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(KeyError), no_cycle_collection():
        raise KeyError("x")
    assert gc.isenabled()  # also after an error
    gc.disable()
    try:
        with no_cycle_collection():
            pass
        assert not gc.isenabled()  # a caller that had paused it keeps it paused
    finally:
        gc.enable()
