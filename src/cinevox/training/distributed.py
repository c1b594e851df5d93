"""Training on several processes with ``torchrun`` (torch.distributed, DDP), on GPUs (NCCL) or CPUs (gloo).

``torchrun --nproc-per-node N -m cinevox train PREPARED --out RUN ...`` (and torchrun's rendezvous flags for
several nodes). ``--batch-size`` stays the *global* batch: every step, the global batch that one process would
take (the same seeded permutation) is split across the ranks, each rank's loss is weighted by its share, and
DDP's gradient average then equals the single-process gradient. With ``--sync-bn`` the BatchNorm statistics are
those of the global batch too (``nn.SyncBatchNorm`` on GPUs; :class:`GlobalBatchNorm2d` on CPUs, where PyTorch's
SyncBatchNorm is not available), so that a run does not depend on how many processes share it (dropout masks
are drawn per rank, from seeds per rank).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from cinevox.utils.collective import AllReduceSum

logger = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info_from_env() -> DistInfo:
    """What torchrun set (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``); one process otherwise."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), ws)


STARTED = False  # whether this process ever joined a process group (cli.entry then skips the interpreter's teardown)


def init_distributed(info: DistInfo, device: torch.device) -> None:
    global STARTED
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        STARTED = True
        logger.info("rank %d of %d (%s backend) on %s", info.rank, info.world_size, backend, device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class GlobalBatchSampler:
    """Index batches of one rank: the global batches of a seeded permutation (as one process takes them), each
    split into ``world_size`` contiguous parts. Yields ``(indices of this rank, size of the global batch)``.

    A last global batch smaller than ``world_size`` would leave a rank empty; it is dropped (logged)."""

    def __init__(self, n: int, batch_size: int, info: DistInfo, seed: int) -> None:
        self.n, self.batch_size, self.info, self.seed = n, batch_size, info, seed

    def batches(self) -> Iterator[tuple[list[int], int]]:
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        w, r = self.info.world_size, self.info.rank
        for start in range(0, self.n, self.batch_size):
            chunk = perm[start : start + self.batch_size]
            if len(chunk) < w:
                logger.info("last batch of %d samples dropped (fewer than %d processes)", len(chunk), w)
                return
            bounds = [round(k * len(chunk) / w) for k in range(w + 1)]
            yield chunk[bounds[r] : bounds[r + 1]], len(chunk)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch across the processes (sums
    all-reduced with autograd), for CPU / gloo where ``nn.SyncBatchNorm`` is unavailable. Same parameters,
    buffers and state-dict keys as BatchNorm2d; identical to it in one process and in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        # sums accumulated in float64: var = E[x^2] - mean^2 cancels badly in float32 for ReLU outputs
        local = torch.cat([xf.sum(dim=(0, 2, 3), dtype=torch.float64),
                           (xf * xf).sum(dim=(0, 2, 3), dtype=torch.float64),
                           torch.tensor([x.numel() / c], dtype=torch.float64, device=x.device)])
        total = AllReduceSum.apply(local)  # differentiable sum over ranks
        count = total[-1]
        mean64 = total[:c] / count
        var = (total[c : 2 * c] / count - mean64 * mean64).clamp_min(0).float()
        mean = mean64.float()
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                n = float(count)
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / max(n - 1, 1))
        y = (xf - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Global-batch BatchNorm: ``nn.SyncBatchNorm`` on GPUs, :class:`GlobalBatchNorm2d` on CPUs."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats).to(next(child.buffers()).device)
            new.load_state_dict(child.state_dict())
            setattr(model, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (state-dict keys without ``module.``)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

