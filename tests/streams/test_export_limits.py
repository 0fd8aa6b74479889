"""export with a clip that cannot be held in memory: one StreamsError line, nothing written."""
import pytest

from streams.errors import StreamsError
from streams.export import export_checkpoint
from tests.builders import checkpoint_with_statistics


def test_export_of_a_clip_too_large_for_memory_is_one_line(tmp_path):
    """`export --crop 100000` was a RuntimeError traceback from torch's allocator. A crop of 10^7 px asks
    for petabytes, beyond any address space, so the allocation fails at once on every machine."""
    ckpt = checkpoint_with_statistics(tmp_path / "rgb.pt")
    out = tmp_path / "exports"
    with pytest.raises(StreamsError, match=r"^export: an example clip of \d+ frames x 10000000x10000000 does not "
                                           r"fit in memory \(.*\): give a smaller --crop / --clip-len$"):
        export_checkpoint(ckpt, out, ("torchscript",), crop=10**7)
    assert not out.exists() or not any(out.iterdir())
