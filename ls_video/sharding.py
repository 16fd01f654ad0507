"""Sharded training (FSDP2): only the U-Net is sharded, block by block; the frozen VAE and text encoder
stay whole on every rank.

Lightning's ``ModelParallelStrategy`` (``configs/strategy/fsdp.yaml``) gives the LightningModule a device
mesh and calls ``configure_model``, which calls :func:`shard_unet`. Runs on GPUs (NCCL) and on CPUs (gloo).
With the strategy's defaults the mesh is (nodes, devices per node): the U-Net is sharded over the devices
of a node and replicated across nodes (HSDP: all-gathers stay inside a node). No tensor parallelism.
Helpers here let the EMA keep its average sharded exactly like the weights and write it whole.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor


def unet_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The units sharded one by one: every down block, the mid block and every up block."""
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    return [b for b in blocks if b is not None]


def shard_unet(unet: torch.nn.Module, mesh: DeviceMesh) -> None:
    """``fully_shard`` each U-Net block, then the U-Net (its stem, time embedding and output layers), over
    ``mesh`` (1-D: sharded over all ranks; 2-D: replicated over the first dimension, sharded over the second).

    Weights, gradients and optimizer state stay fp32; ``bf16-mixed`` computes in bf16 through autocast,
    as under DDP.
    """
    for block in unet_blocks(unet):
        fully_shard(block, mesh=mesh)
    fully_shard(unet, mesh=mesh)


def is_sharded(t: torch.Tensor) -> bool:
    return isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective: every rank calls it for the same tensor), or ``t``."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def like(whole: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``whole`` laid out as ``param`` is: this rank's shard of it for a sharded parameter (cut locally,
    no communication: every rank holds the whole tensor), else ``whole`` on ``param``'s device."""
    if isinstance(whole, DTensor):
        return whole
    if isinstance(param, DTensor):
        return distribute_tensor(whole.to(param.device, param.dtype), param.device_mesh, param.placements,
                                 src_data_rank=None)
    return whole.to(param.device)


def reshard(module: torch.nn.Module) -> None:
    """Put every sharded part of ``module`` back into shards (FSDP2 leaves the root's weights gathered after a
    forward without backward), so its parameters are this rank's shards again. Nothing for a plain module."""
    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()
