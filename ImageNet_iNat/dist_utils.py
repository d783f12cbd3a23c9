"""Process-group plumbing for ``torchrun``: NCCL on GPUs, gloo on the CPU, a no-op for one process.

The classifier of stage 2 is tiny, so it is not wrapped in DistributedDataParallel: after each
backward its gradients are averaged with one all-reduce (``average_gradients``), which also
carries the "stop requested" and "non-finite loss" flags of every rank, so all ranks take the
same decision at the same step. The covariance estimator can see the global batch
(``GlobalBatchEstimatorCV``): every rank all-gathers the step's features and labels and updates
its estimator with all of them, so every rank holds the same statistics.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from loss import EstimatorCV


@dataclass
class DistContext:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0


def launched_world():
    """(world size, rank, local rank) from torchrun's environment (1, 0, 0 without torchrun)."""
    return (int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(device):
    world_size, rank, local_rank = launched_world()
    ctx = DistContext(world_size, rank, local_rank, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if ctx.distributed and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return ctx


def shutdown(ctx):
    if ctx is not None and ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather_equal(tensor, ctx):
    """Concatenation over ranks (rank order) of same-shaped tensors."""
    if not ctx.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def gather_variable(tensor, ctx):
    """Concatenation over ranks (rank order) of tensors whose first dimension may differ."""
    if not ctx.distributed:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = gather_equal(size, ctx).tolist()
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    parts = gather_equal(padded.unsqueeze(0), ctx)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


class GlobalBatchEstimatorCV(EstimatorCV):
    """ISDA's estimator updated with the global batch: identical statistics on every rank.

    The released code updates each rank's estimator with its own shard only, so the ranks'
    covariances drift apart; that behaviour is the plain ``EstimatorCV``. Every rank must call
    ``update`` with as many samples (guaranteed by the DistributedSampler padding).
    """

    def __init__(self, feature_dim, num_classes, diagonal, ctx):
        super().__init__(feature_dim, num_classes, diagonal)
        self._ctx = ctx

    def update(self, features, labels):
        super().update(gather_equal(features.detach(), self._ctx), gather_equal(labels, self._ctx))


def average_gradients(parameters, ctx, *flags):
    """Average the parameters' gradients over ranks; returns the flags summed over ranks."""
    parameters = [p for p in parameters if p.grad is not None]
    device = parameters[0].grad.device if parameters else ctx.device
    flag_tensor = torch.tensor([float(f) for f in flags], device=device)
    if not ctx.distributed:
        return flag_tensor.tolist()
    flat = torch.cat([p.grad.reshape(-1) for p in parameters] + [flag_tensor.to(parameters[0].grad.dtype)])
    dist.all_reduce(flat)
    offset = 0
    for p in parameters:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad)).div_(ctx.world_size)
        offset += n
    return flat[offset:].tolist()


def sum_over_ranks(ctx, *values):
    """Sums over ranks of a few numbers (flags, counts), in float64; every rank gets them."""
    tensor = torch.tensor([float(v) for v in values], device=ctx.device, dtype=torch.float64)
    if ctx.distributed:
        dist.all_reduce(tensor)
    return tensor.tolist()


def max_deviation_from_rank0(tensors, ctx):
    """Largest |x - x_rank0| over the tensors and ranks (0.0 for one process); every rank gets it."""
    if not ctx.distributed:
        return 0.0
    deviation = torch.zeros((), device=ctx.device, dtype=torch.float64)
    for tensor in tensors:
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        deviation = torch.maximum(deviation, (tensor.detach() - reference).abs().max().to(deviation))
    dist.all_reduce(deviation, op=dist.ReduceOp.MAX)
    return float(deviation)


def broadcast_from_rank0(tensors, ctx):
    if ctx.distributed:
        for tensor in tensors:
            dist.broadcast(tensor, src=0)
