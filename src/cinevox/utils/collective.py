"""Differentiable collectives over torch.distributed processes (no-ops in one process).

Used where a quantity of the *global* batch enters the loss (BatchNorm statistics, the authors' batch min-max),
so that a run does not depend on how many processes share each batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def distributed_active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class AllReduceSum(torch.autograd.Function):
    """Sum over processes; its gradient is the sum of the processes' output gradients (every process' loss
    depends on the total)."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def global_extreme(x: torch.Tensor, largest: bool) -> torch.Tensor:
    """The min (or max) of ``x`` over every process' ``x``, a scalar on every process, differentiable: the
    gradient of every process' loss reaches the element that holds the extreme, on the process that holds it
    (the lowest rank among equal ones). In one process: ``x.min()`` / ``x.max()``."""
    local = x.max() if largest else x.min()
    if not distributed_active():
        return local
    value = local.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.MAX if largest else dist.ReduceOp.MIN)
    holds = torch.zeros(dist.get_world_size(), device=x.device, dtype=torch.float32)
    holds[dist.get_rank()] = float(bool(local.detach() == value))
    dist.all_reduce(holds)
    owner = int(torch.nonzero(holds).flatten()[0])
    contribution = local if owner == dist.get_rank() else local * 0
    return AllReduceSum.apply(contribution)
