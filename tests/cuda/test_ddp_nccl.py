"""DDP over NCCL in one process (one GPU holds one NCCL rank): the process group from the torchrun
variables, streams.distributed's setup and SyncBatchNorm, and bf16 training steps through
DistributedDataParallel. tests/streams/test_ddp.py checks two gloo processes against one."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cuda
REPO = Path(__file__).resolve().parents[2]

# Run as `python -c SCRIPT BACKEND`: NCCL in a process of its own, so that a hang or a crash in it
# is a failed test (timeout) rather than a stuck test session.
SCRIPT = """
import json, sys
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from streams import distributed
from streams.config import TrainConfig
from streams.p3d import build_model
from streams.schedule import param_groups
from streams.train import train_step

backend = sys.argv[1]
dist.init_process_group(backend)  # env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
ctx = distributed.setup("cuda" if backend == "nccl" else "cpu")
torch.manual_seed(0)
model = distributed.sync_batchnorm(build_model("p3d_tiny", 4, 3, dropout=0.0), ctx.device).to(ctx.device)
net = DistributedDataParallel(model, device_ids=[ctx.device.index] if backend == "nccl" else None)
cfg = TrainConfig(lr=0.01, fc_lr_mult=1.0)
groups = param_groups(model, "rgb", lr=cfg.lr, weight_decay=cfg.weight_decay, fc_lr_mult=cfg.fc_lr_mult)
optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
scaler = torch.amp.GradScaler(ctx.device.type, enabled=False)
clips = torch.randint(0, 256, (8, 3, 8, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
labels = torch.arange(8) % 4
amp = torch.bfloat16 if backend == "nccl" else None
losses = [float(train_step(net, optimizer, scaler, clips, labels, "rgb", device=ctx.device, amp_dtype=amp,
                                channels_last=True)[0])
          for _ in range(8)]
total = torch.full((1,), 3.0, device=ctx.device)
dist.all_reduce(total)
print(json.dumps({"backend": dist.get_backend(), "rank": ctx.rank, "world": ctx.world_size,
                  "all_reduce": float(total), "bn": type(model.bn1).__name__, "losses": losses}))
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one_process(backend: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "GROUP_RANK")}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    env.setdefault("NCCL_SOCKET_IFNAME", "lo")  # one machine: NCCL's bootstrap on loopback, not a dead NIC
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    # 45 s: the process takes about 10 (torch, CUDA, NCCL's init); a hang must fail inside the
    # correctness section's budget of bench/gpu.py, not use it up.
    proc = subprocess.run([sys.executable, "-c", SCRIPT, backend], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=45)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_one_process_nccl_ddp_trains(cuda):
    out = run_one_process("nccl")
    assert (out["backend"], out["rank"], out["world"], out["bn"]) == ("nccl", 0, 1, "SyncBatchNorm")
    assert out["all_reduce"] == 3.0
    losses = out["losses"]
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0], losses
