"""Processes and devices for training: one process, or DDP under torchrun (nccl on CUDA, gloo on CPU).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `setup` reads them. With
several processes BN layers in training mode see the whole global batch (`sync_batchnorm`): torch's
SyncBatchNorm on CUDA, `CpuSyncBatchNorm` (differentiable all-reduces, `_AllReduceSum`) on CPU, where torch's is
unsupported. That is what makes an N-process step equal a one-process step on the combined batch.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from p3dbase.device import resolve_device
from p3dbase.errors import excerpt
from streams.errors import StreamsError


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # setup() created the process group, teardown() destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# How long a process waits for the others of its group to join (the rendezvous only; collectives keep
# torch's timeout): torch's 30 min left a shell with a stale WORLD_SIZE (a torchrun or SLURM leftover)
# waiting silently, deaf to Ctrl-C.
JOIN_TIMEOUT = timedelta(minutes=10)


def launch_env() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's variables, checked: StreamsError naming the variable
    when one is not a whole number, a rank is outside the world, or a group lacks its rendezvous address."""
    values = {}
    for name, default in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        text = os.environ.get(name, default)
        try:
            values[name] = int(text)
        except ValueError:
            raise StreamsError(f"environment variable {name}={excerpt(text, 40)} is not a whole number (torchrun sets "
                               "it; unset it to train in one process)") from None
    world, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise StreamsError(f"environment variables WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local}: a rank must "
                           "be 0..WORLD_SIZE-1 (torchrun sets them; unset them to train in one process)")
    if world > 1:
        unset = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if unset:
            raise StreamsError(f"WORLD_SIZE={world} but {' and '.join(unset)} not set: launch with torchrun, or unset "
                               "WORLD_SIZE and RANK to train in one process")
    return world, rank, local


@contextmanager
def main_process_speaks() -> Iterator[None]:
    """Under torchrun, only process 0 prints notes and warnings (as torchvision's references make
    `print` silent on the others): every rank said "held out as validation" and each reader warning
    once more. Errors still come from every process (stderr)."""
    if launch_env()[1] == 0:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with open(os.devnull, "w") as devnull, redirect_stdout(devnull):
            yield
    finally:
        logging.disable(previous)


def setup(device_setting: str) -> DistContext:
    """This process's rank and device; joins the process group when launched by torchrun."""
    world_size, rank, local_rank = launch_env()
    device = resolve_device(device_setting, "train.device", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if world_size > 1 and not dist.is_initialized():
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        if rank == 0:
            print(f"train: waiting for the {world_size} processes of the group at {where} (at most "
                  f"{JOIN_TIMEOUT.total_seconds():.0f} s)", flush=True)
        try:  # the join waits JOIN_TIMEOUT; the group's collectives keep torch's default timeout
            store, rank, world_size = next(dist.rendezvous("env://", rank, world_size, timeout=JOIN_TIMEOUT))
        except (dist.DistStoreError, dist.DistNetworkError) as err:  # nobody came, or the address refuses
            raise StreamsError(f"rank {rank} could not join the {world_size} processes at {where}: "
                               f"{excerpt(str(err).splitlines()[0] if str(err) else type(err).__name__, 200)} "
                               "(a stale WORLD_SIZE / RANK in the environment? unset them to train in one "
                               "process)") from None
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                                world_size=world_size)
        owns = True
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistContext(rank, world_size, local_rank, device, owns)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_min(value: float, ctx: DistContext) -> float:
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return float(t.item())


def all_gather_object(obj: Any, ctx: DistContext) -> list[Any]:
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


class _AllReduceSum(torch.autograd.Function):
    """A differentiable all-reduce (sum): the gradient of a sum over processes is the sum of the
    gradients. torch.distributed.nn.functional.all_reduce does the same, deprecated with a warning per
    call (each BN layer, each step) towards a private module."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics cover every process's batch, on any device.

    Mean and biased variance come from two differentiable all-reduces (`_AllReduceSum`), so the
    backward pass is the exact gradient of the global-batch BN; the running variance gets the unbiased
    global variance, as nn.BatchNorm does. Outside a process group it is a plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([float(x.numel() // x.shape[1])], dtype=x.dtype, device=x.device)
        sums = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        total = sums[-1]
        mean = sums[:-1] / total
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / total
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * (total / (total - 1).clamp(min=1))
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return y


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BN (names, parameters, buffers and train/eval state kept) by a synchronised one."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, CpuSyncBatchNorm):
            new = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            new.load_state_dict(child.state_dict())
            if child.affine:
                new.weight.requires_grad_(child.weight.requires_grad)
                new.bias.requires_grad_(child.bias.requires_grad)
            new.train(child.training)
            setattr(model, name, new)
        else:
            sync_batchnorm(child, device)
    return model
