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


def launch(run) -> dict:
    """Train `run` (a dlexp.run.Run) as `trainer.devices` processes under torchrun.

    This process holds the run folder for them; each process gets the run's config and folder
    through its environment and calls `train(cfg, run_dir)` (see `main` below).
    """
    from omegaconf import OmegaConf

    from dlexp.errors import DlexpError
    from dlexp.run import LAUNCHED, metrics_of

    devices = int(run.cfg.trainer.devices)
    cfg = run.cfg.copy()
    if run.resume is not None and not cfg.trainer.resume:
        cfg.trainer.resume = str(run.dir / "checkpoints" / "last.pt")  # a requeued run
    env = {**os.environ, LAUNCHED: str(run.dir), "DLEXP_RUN_CONFIG": OmegaConf.to_yaml(cfg)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={devices}",
        "-m",
        "dlexp.distributed",
    ]
    log.info(f"starting {devices} processes with torch.distributed.run; run folder {run.dir}")
    run.started = True  # whatever happens now, the folder is the run's
    code = subprocess.call(cmd, env=env)
    if code:
        raise DlexpError(
            f"a process of the distributed run in {run.dir} failed (exit status {code}) and the "
            "others were stopped; torchrun's summary above names its rank, exit code and error."
        )
    return metrics_of(run.dir)


def main() -> None:
    """One process of a run started by `launch` (python -m dlexp.distributed, under torchrun)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from dlexp.progress import console_handler
    from dlexp.run import LAUNCHED
    from dlexp.train import train

    logger = logging.getLogger("dlexp")
    logger.setLevel(logging.INFO)
    logger.addHandler(console_handler())
    try:
        train(OmegaConf.create(os.environ["DLEXP_RUN_CONFIG"]), Path(os.environ[LAUNCHED]))
    finally:
        # Leave the group while the interpreter is alive: gloo's worker threads torn down at
        # exit can abort the process ("terminate called without an active exception": once in
        # this session's suite runs; pytorch/pytorch#190489).
        if dist.is_initialized():
            dist.destroy_process_group()


class NullWriter:
    """What ranks other than 0 get instead of an EventWriter: every call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None

    @property
    def file_writer(self) -> NullWriter:
        return self


if __name__ == "__main__":
    main()
