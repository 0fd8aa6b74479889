"""The eval tests' tiny frame + flow store and tiny randomly initialised stream checkpoints (the colour
toy of tests/builders.py: classes differ in colour and in vertical motion, so that even the pool5
features of a random network separate them and a linear SVM on them is right on every test video)."""
from __future__ import annotations

import pytest

from tests.builders import COLOUR_TRAIN_CFG, COLOURS, make_toy_store, save_tiny_checkpoint

CLASSES = COLOURS
HEIGHT, WIDTH = 24, 32
FRAMES = 10
TRAIN_CFG = COLOUR_TRAIN_CFG
CLIP_LEN = TRAIN_CFG.clip_len


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """(store root, train items, test items): 3 classes x 8 videos, 5 train / 3 test per class; labels
    as tuples (eval takes multi-label videos)."""
    root = tmp_path_factory.mktemp("eval_store")
    items = [(v, (label,)) for v, label in make_toy_store(root, CLASSES, per_class=8, frames=FRAMES, height=HEIGHT,
                                                           width=WIDTH)]
    train = [it for it in items if int(it[0][-2:]) < 5]
    test = [it for it in items if int(it[0][-2:]) >= 5]
    return root, train, test


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """{"rgb": train dir, "flow": train dir}, each holding a last.pt of a random p3d_tiny."""
    root = tmp_path_factory.mktemp("eval_train")
    dirs = {}
    for k, modality in enumerate(("rgb", "flow")):
        dirs[modality] = root / modality / "split1"
        save_tiny_checkpoint(dirs[modality] / "last.pt", modality, seed=k)
    return dirs
