"""`fit(runs)`: build what a group of opened runs trains and train it through the one engine.

A group is one run (any config: `dlexp train`, a job of Hydra's basic launcher) or several
sweep jobs that share an architecture (the batched launcher). Both build their jobs from their
configs the same way (dlexp.build), keep the same per-job records (dlexp.record) and train in
the same loop (dlexp.trainer); only the step differs: autograd on one module
(dlexp.steps.ModuleStep) or the group's stacked models (dlexp.stacked.StackedStep).
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import get_class

from dlexp.build import build, build_optimizer, build_scheduler, param_group, seed_everything
from dlexp.device import resolve_device
from dlexp.distributed import Dist, setup
from dlexp.errors import DlexpError
from dlexp.record import Job, Records, hparams_of
from dlexp.stacked import StackedStep
from dlexp.steps import ModuleStep, steps_per_epoch
from dlexp.trainer import Diverged, Trainer, TrainerSettings

log = logging.getLogger("dlexp")


def fit(runs: list) -> list[dict | None]:
    """Train opened runs (dlexp.run.Run): one, or a group that dlexp.stacked.why_not_stacked
    accepts. Returns each job's final metrics (None for a job that diverged in a group); a
    single run that diverges raises Diverged."""
    cfg = runs[0].cfg
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device, cfg.trainer.deterministic)
    trainer = TrainerSettings.of(cfg.trainer)
    if len(runs) == 1:
        step, task, dist = _module_step(runs[0], device, trainer)
    else:
        step, dist = _stacked_step(runs, device, trainer), Dist()
        task = step.task
    n_val = len(step.datas[0].val)
    monitor = f"val/{task.monitor}" if n_val else f"train/{task.monitor}"
    objective = cfg.get("objective")
    if objective and str(objective).startswith(("val/", "train/")):
        monitor = objective  # the sweep's objective picks best.pt too
    jobs = [
        Job(
            r.dir,
            r.id,
            r.cfg,
            d.meta,
            hparams_of(r.cfg, r.dir, r.hydra),
            r.resume,
            r.resume_command,
        )
        for r, d in zip(runs, step.datas, strict=True)
    ]
    records = Records(jobs, monitor, trainer, main=dist.main, own_log=len(runs) > 1)
    engine = Trainer(trainer, step, records, task, dist)
    _say_what_trains(records, step, device, len(runs))
    for run in runs:
        run.started = True
    try:
        finals = engine.fit(cfg.data.batch_size, cfg.data.eval_batch_size)
    finally:
        records.close()
    if len(runs) == 1 and records.status[0] == "diverged":
        raise Diverged(records.message[0])
    return finals


def _module_step(run, device, trainer) -> tuple[ModuleStep, Any, Dist]:
    """One run: its model, task, optimizers and scheduler; torchrun's processes joined."""
    cfg = run.cfg
    dist = setup(device.type)
    if dist.active:
        if device.type == "cuda":
            import torch

            device = torch.device("cuda", dist.local_rank)
        if not dist.main:  # rank 0 speaks for the run
            logging.getLogger("dlexp").setLevel(logging.WARNING)
    data, task, model = build(cfg, device)
    if dist.world > 1:
        if not task.ddp_ready:
            raise DlexpError(
                f"trainer.devices={dist.world}: task {type(task).__name__} steps parts of its "
                "model separately, which DistributedDataParallel cannot synchronise; use "
                "trainer.devices=1."
            )
        log.info(
            f"{dist.world} processes x data.batch_size {cfg.data.batch_size} = global batch "
            f"{dist.world * cfg.data.batch_size} (each process trains on its shard of every epoch)"
        )
    # One optimizer per parameter group the task names (a GAN: `optimizer` and `optimizer_d`).
    groups = task.parameter_groups(model)
    optimizers = {key: build_optimizer(cfg[key], params, device) for key, params in groups.items()}
    steps = steps_per_epoch(
        len(data.train), cfg.data.batch_size, dist.world, trainer.max_steps_per_epoch
    )
    scheduler, interval = build_scheduler(
        cfg.scheduler, optimizers["optimizer"], steps * trainer.epochs
    )
    if trainer.compile:
        log.info("compiling the model with torch.compile (the first steps will be slow)")
    step = ModuleStep(
        task, model, data, optimizers, scheduler, interval, trainer, device, cfg.seed, dist
    )
    return step, task, dist


def _stacked_step(runs: list, device, trainer) -> StackedStep:
    """A group's jobs, each built from its own config (its seed draws its data and weights),
    stacked; each job's optimizer hyperparameters as its own torch optimizer holds them."""
    built, level = [], log.level
    try:
        for k, run in enumerate(runs):
            seed_everything(run.cfg.seed)
            if k == 1:  # the first job's build says what it loaded; the rest would repeat it
                log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
            built.append(build(run.cfg, device, built[0][1] if built else None))
    finally:
        log.setLevel(level)
    task = built[0][1]
    n_params = len(list(built[0][2].parameters()))
    groups = [param_group(r.cfg.optimizer, n_params, device) for r in runs]
    return StackedStep(
        task,
        [m for _, _, m in built],
        [d for d, _, _ in built],
        groups,
        get_class(runs[0].cfg.optimizer._target_),
        trainer,
        device,
        [r.cfg.seed for r in runs],
        [float(r.cfg.trainer.l1) for r in runs],
    )


def _say_what_trains(records: Records, step, device, n: int) -> None:
    for j, data in enumerate(step.datas):
        model = step.models[j] if n > 1 else step.model
        sizes = f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test samples"
        if n > 1:
            records.log(
                j,
                f"{type(model).__name__} trained in a stacked group of {n} jobs "
                f"(hydra/launcher=batched) on {data.meta.name}: {sizes}, device {device}",
            )
        else:
            params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            records.log(
                j,
                f"{type(model).__name__} ({params:,} parameters) on {data.meta.name}: {sizes}, "
                f"device {device}",
            )
