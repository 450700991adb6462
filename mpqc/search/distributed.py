"""Data-parallel search under `torchrun` (PyTorch DDP, gloo on CPU).

Every process runs the same search on its shard of each split; DDP averages the
gradients (of the meta weights, steps and strengths alike), so all replicas take the
same optimizer steps. Only rank 0 writes checkpoints and results. Without torchrun's
environment (WORLD_SIZE unset or 1) everything here is the identity.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from mpqc.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def join_world() -> World:
    """The process group torchrun describes in the environment (joined once)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        try:
            dist.init_process_group("gloo")
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot join the torchrun process group (gloo): {exc}") from exc
    return World(dist.get_rank(), dist.get_world_size())


def loader(dataset, batch_size: int, shuffle: bool, seed: int, world: World) -> DataLoader:
    """Batches of `batch_size` per process; each process reads its own shard."""
    if world.distributed:
        sampler = DistributedSampler(dataset, world.size, world.rank, shuffle=shuffle, seed=seed)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler)
    data = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed))
    data.mpqc_seed = seed
    return data


def set_epoch(loaders, epoch: int) -> None:
    """The shuffle of `epoch`, a function of (seed, epoch) only: a resumed run reads the
    batches the uninterrupted run would have read."""
    for data in loaders:
        if isinstance(data.sampler, DistributedSampler):
            data.sampler.set_epoch(epoch)
        elif getattr(data, "generator", None) is not None and hasattr(data, "mpqc_seed"):
            data.generator.manual_seed(data.mpqc_seed * 1_000_003 + epoch)


def replicate(module: nn.Module, world: World) -> nn.Module:
    """The module to call in training: DDP-wrapped when distributed (parameters are
    broadcast from rank 0 here), else the module itself. Checkpoints take `module`."""
    if not world.distributed:
        return module
    return nn.parallel.DistributedDataParallel(module)


def replicas_agree(module: nn.Module, world: World) -> bool:
    """Whether every process holds the same parameters (a checksum compared across ranks)."""
    if not world.distributed:
        return True
    with torch.no_grad():
        total = torch.stack([p.detach().double().sum() for p in module.parameters()])
        gathered = [torch.zeros_like(total) for _ in range(world.size)]
        dist.all_gather(gathered, total)
    return all(torch.allclose(g, gathered[0], rtol=1e-6, atol=1e-9) for g in gathered)
