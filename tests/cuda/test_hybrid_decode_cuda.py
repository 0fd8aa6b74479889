"""train.decode = "hybrid" on CUDA: a batch of sparse coefficients, pinned and moved with non_blocking
as the trainer moves it, finishes decoding on the GPU to the clips the CPU device gives (float32 on
both; TF32 off for the inverse DCT's matrix product, whose 10-bit mantissa would round levels)."""
from __future__ import annotations

import pytest
import torch

from streams import gpu_decode
from streams.clips import ClipDataset
from tests.builders import make_toy_store

pytestmark = pytest.mark.cuda


def test_a_hybrid_batch_decodes_on_the_gpu_as_on_the_cpu(tmp_path, cuda):
    items = make_toy_store(tmp_path, ["a", "b"], per_class=3, width=40, codec="jpeg")
    for modality in ("rgb", "flow"):  # one test (a row of bench/gpu.py's correctness section), both modalities
        dataset = ClipDataset(tmp_path, items, modality, 8, train=True, resize=(30, 36), crop=24, seed=3,
                              decode="hybrid")
        batch, _ = gpu_decode.collate([dataset[(k, 0)] for k in range(6)])
        on_cpu = batch.to("cpu")
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            on_gpu = batch.pin_memory().to(cuda, non_blocking=True)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        assert on_gpu.device.type == "cuda" and on_gpu.shape == on_cpu.shape
        diff = (on_gpu.cpu().int() - on_cpu.int()).abs()
        assert diff.max() <= 1 and diff.float().mean() < 0.01, modality  # float rounding order apart
