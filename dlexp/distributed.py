"""Several processes, one run: PyTorch's elastic launcher (torchrun) and DistributedDataParallel.

`dlexp train trainer.devices=N` starts N processes with `torch.distributed.run`; each sees
RANK/WORLD_SIZE in its environment, joins the process group (NCCL on GPUs, gloo on CPUs)
and trains on its own shard of every epoch's shuffled data. Gradients are averaged by DDP;
metric sums are added across processes. Only rank 0 writes: TensorBoard, checkpoints,
metrics.json and the log. `data.batch_size` is per process (global batch = N x batch_size).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
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


def launch(args: list[str], devices: int, run_dir: str) -> int:
    """Re-run this `dlexp train` command as `devices` processes under torchrun, one run folder."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={devices}",
        "-m",
        "dlexp",
        "train",
        *args,
        f"hydra.run.dir={run_dir}",
    ]
    print(
        f"dlexp: starting {devices} processes with torch.distributed.run; run folder {run_dir}",
        flush=True,
    )
    code = subprocess.call(cmd)
    if code:
        print(
            "dlexp: a process of the distributed run failed and the others were stopped; "
            "torchrun's summary above names its rank, exit code and error.",
            file=sys.stderr,
        )
    return code


def default_run_dir(args: list[str], run_id: str | None = None) -> str:
    """The run folder all processes share (named like a single-process run, or by torchrun's
    run id, which every rank of a job started by hand with torchrun sees)."""
    choice = {k: v for k, _, v in (a.partition("=") for a in args)}
    root = os.environ.get("DLEXP_OUTPUTS", "outputs")
    stamp = (
        f"torchrun-{run_id}"
        if run_id
        else time.strftime("%Y-%m-%d_%H-%M-%S") + f"-{int(time.time() * 1e6) % 1_000_000:06d}"
    )
    return os.path.join(
        root, "runs", f"{stamp}_{choice.get('model', 'ann')}_{choice.get('data', 'iris')}"
    )


class NullWriter:
    """What ranks other than 0 get instead of a SummaryWriter: every call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None

    @property
    def file_writer(self) -> NullWriter:
        return self
