"""Process-group setup and synchronised BatchNorm that also works on CPU (gloo).

``torch.nn.SyncBatchNorm`` refuses CPU tensors ("expected input tensor to be on GPU"), so
we synchronise the statistics ourselves: a two-pass all-reduce of the per-channel sum and
the centred sum of squares over every rank's batch, through the autograd-aware
``torch.distributed.nn.functional.all_reduce`` (its backward all-reduces the gradients, so
each rank's gradient includes the other ranks' dependence on its samples). Normalising with
global statistics makes a ``world × b`` run match a single process with batch ``world · b``.
"""

import warnings

import torch
import torch.distributed as dist
from torch import nn

from moebius.distributed import World


def init_distributed() -> World:
    """Join the process group described by torchrun's environment (no-op for one process);
    inconsistent variables are one-line errors (:meth:`moebius.distributed.World.from_env`).
    The group stays joined for the life of the process: a trainer's collectives run until it
    exits."""
    world = World.from_env()
    if world.size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend)
    return world


def average_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a new tensor; no autograd)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def _global_sum(x: torch.Tensor) -> torch.Tensor:
    from torch.distributed.nn.functional import all_reduce

    # the suggested replacement (_functional_collectives) has no autograd for all_reduce
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(x)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any input rank ≥ 2, channels on dim 1) with statistics over all ranks in
    training mode. Same parameters, buffers and state-dict keys as the BatchNorm it replaces."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        synced = self.training and dist.is_available() and dist.is_initialized()
        if not synced or dist.get_world_size() == 1:
            return super().forward(x)
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local_count = x.numel() // x.shape[1]
        count = _global_sum(torch.tensor([float(local_count)], device=x.device, dtype=x.dtype))
        mean = _global_sum(x.sum(dim=dims)) / count
        centred = x - mean.view(shape)
        var = _global_sum(centred.pow(2).sum(dim=dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), momentum)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm{1,2,3}d in ``module`` (in place) by :class:`SyncBatchNorm`."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
            child, SyncBatchNorm
        ):
            synced = SyncBatchNorm(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            reference = next(iter([*child.parameters(), *child.buffers()]))
            synced.to(reference)  # device and floating dtype of the replaced layer
            synced.load_state_dict(child.state_dict())
            synced.train(child.training)
            setattr(module, name, synced)
        else:
            convert_sync_batchnorm(child)
    return module
