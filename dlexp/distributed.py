"""Several processes, one run: the process group of a run started under torchrun.

`dlexp train trainer.devices=N` starts N processes with `torch.distributed.run` (dlexp.run.
launch, dlexp.torchrun); each sees
RANK/WORLD_SIZE in its environment, joins the process group (NCCL on GPUs, gloo on CPUs)
and trains on its own shard of every epoch's shuffled data. Gradients are averaged by DDP;
metric sums are added across processes. Only rank 0 writes: TensorBoard, checkpoints,
metrics.json and the log. `data.batch_size` is per process (global batch = N x batch_size).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger("dlexp")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    active: bool = False  # started by torchrun: in a process group, the model wrapped in DDP

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, sums: dict[str, torch.Tensor], count: int) -> tuple[dict[str, torch.Tensor], int]:
        """Metric sums and sample counts added over all processes (one all-reduce)."""
        if self.world == 1 or not sums:
            return sums, count
        keys = list(sums)
        flat = torch.stack(
            [sums[k].float() for k in keys]
            + [torch.tensor(float(count), device=sums[keys[0]].device)]
        )
        dist.all_reduce(flat)
        return dict(zip(keys, flat[:-1], strict=True)), int(flat[-1].item())


def setup(device_type: str) -> Dist:
    """Join the process group when started by torchrun (WORLD_SIZE > 1)."""
    if "LOCAL_RANK" not in os.environ:  # a plain process
        return Dist()
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    log.info(f"process group: {backend}, rank {rank} of {world}")
    return Dist(rank, world, local_rank, active=True)
