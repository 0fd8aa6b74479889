"""The transfer stage with a given `benchmark.NAME.flow_store`: the store is opened once, its settings
checked and the same Store read for the features (nothing between the check and the reads can swap it)."""
from pathlib import Path

import flow.store
import fusion.transfer_features
import fusion.transfer_stage
from flow.config import FlowConfig
from fusion.transfer_config import TransferConfig
from fusion.transfer_stage import Benchmark, TransferVideo, run_transfer

from .conftest import CLASSES


def test_a_given_flow_store_is_opened_once_and_scored(tiny_store, tiny_checkpoints, tmp_path, monkeypatch):
    root, train, test = tiny_store
    videos = []
    for video_id, labels in [*train, *test]:
        path = tmp_path / "videos" / f"{video_id}.avi"  # the flow stream reads the store; the file is its source
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"source " + video_id.encode())
        videos.append(TransferVideo(video_id, path, tuple(labels)))
    opened: list[Path] = []

    def counting(where, *args, **kwargs):
        opened.append(Path(where))
        return flow.store.open_store(where, *args, **kwargs)

    for module in (fusion.transfer_stage, fusion.transfer_features):
        monkeypatch.setattr(module, "open_store", counting)
    bench = Benchmark("toy", "loo", tmp_path / "videos", list(CLASSES), videos, flow_store=Path(root))
    cfg = TransferConfig(flow=str(tiny_checkpoints["flow"]), benchmarks=["toy"], svm_clips=2, svm_cs=[1.0],
                         svm_folds=2, device="cpu", jobs=1)
    result = run_transfer([bench], cfg, FlowConfig(), tmp_path / "out")
    assert opened == [Path(root)]
    assert list(result.table["stream"]) == ["flow"] and int(result.table["videos"].iloc[0]) == len(videos)
    assert result.excluded.empty
