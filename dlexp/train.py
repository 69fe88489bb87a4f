"""`train(cfg)`: build data, task, model and optimizer from a composed config, then fit."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dlexp.data import load_data
from dlexp.distributed import NullWriter, launch, setup
from dlexp.errors import DlexpError
from dlexp.models import build_model
from dlexp.run import Run, load_run, open_run, yaml_text
from dlexp.tasks import build_task
from dlexp.trainer import Diverged, Interrupted, Trainer, pick_device, write_metrics

log = logging.getLogger("dlexp")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(cfg: DictConfig, deterministic: bool = False) -> torch.device:
    if deterministic:  # cuBLAS needs this set before its first use to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    device = pick_device(cfg.type)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DlexpError(
            f"device={cfg.type} but no CUDA GPU is visible; use device=auto or device=cpu."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DlexpError(
            "device=mps but Apple's MPS backend is not available; use device=auto or device=cpu."
        )
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
    return device


def build_optimizer(cfg: DictConfig, params: list, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer; `fused: null` means fused kernels where torch has them (CPU, CUDA)."""
    from hydra.utils import get_class

    kwargs = OmegaConf.to_container(cfg, resolve=True)  # (instantiate: ~30 ms, this: ~0.1)
    target = kwargs.pop("_target_")
    if "fused" in kwargs and kwargs["fused"] is None:
        kwargs["fused"] = device.type in ("cpu", "cuda")
    return get_class(target)(params, **kwargs)


def build_scheduler(cfg: DictConfig, optimizer, total_steps: int):
    """The scheduler (or None) and whether it steps per `epoch` or per `step`."""
    if cfg.get("_target_") is None:
        return None, "epoch"
    node = OmegaConf.to_container(cfg, resolve=True)
    interval = node.pop("interval", "epoch")
    extra = {"total_steps": total_steps} if cfg._target_.endswith("OneCycleLR") else {}
    try:
        return instantiate(node, optimizer, **extra), interval
    except Exception as err:
        if isinstance(err.__cause__, ZeroDivisionError):  # OneCycleLR with too few steps
            raise DlexpError(
                f"scheduler={node['_target_'].rsplit('.', 1)[-1]} cannot warm up and anneal in "
                f"only {total_steps} steps; train for more epochs or with a smaller "
                "data.batch_size, or choose another scheduler."
            ) from err
        raise


def hparams_of(cfg: DictConfig, run_dir: Path, hc: DictConfig | None = None) -> dict[str, Any]:
    """What the HParams tab compares runs by: this run's overrides first (typed as the config
    types them, so "16" is the number 16), then the group choices and key settings (read from
    the run's .hydra/ record, which every process of the run can see, or from `hc`, the Hydra
    config itself)."""
    import yaml

    out: dict[str, Any] = {}
    record = run_dir / ".hydra" / "hydra.yaml"
    if hc is None and record.is_file():
        hc = OmegaConf.load(record).hydra
    if hc is not None:
        choices = {k: str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
        for override in hc.overrides.task:
            key, _, value = override.partition("=")
            key = key.lstrip("+~")
            if key in choices:
                out[key] = choices[key]
            elif not key.startswith("hydra."):
                typed = OmegaConf.select(cfg, key, default=None)
                out[key] = typed if typed is not None else yaml.safe_load(value)
        out.update({k: v for k, v in choices.items() if k not in out})
    for key in ("optimizer.lr", "data.batch_size", "trainer.epochs", "seed"):
        out.setdefault(key, OmegaConf.select(cfg, key))
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in out.items()}


def build(cfg: DictConfig, device: torch.device, task=None):
    """Data (on the device), task and model for a config; shared by train and eval (and the
    jobs of a stacked group, which share one `task`)."""
    data = load_data(cfg.data, cfg.seed).to(device)
    task = task or build_task(cfg.task, data.meta, cfg.get("loss"))
    start_from = None
    if cfg.model.get("init_from"):  # another run's model, rebuilt and checked like any run
        source = load_run(cfg.model.init_from)
        start_from = (source.path, source.model.state_dict())
    torch.manual_seed(cfg.seed)  # the same initial weights whatever the data loading did
    model = build_model(cfg.model, data.meta, task.num_outputs, start_from)
    return data, task, model


def train(cfg: DictConfig, run_dir: Path | None = None) -> dict[str, Any]:
    """Train the configured model; returns the final metrics (also in <run_dir>/metrics.json).

    The run folder is `run_dir`, Hydra's run folder, or a new one under <out_root>/runs; it is
    claimed for this run (see dlexp.run). With `trainer.resume=<run folder or checkpoint>` it
    continues that run, in its folder, from its last checkpoint, exactly as if it had never
    stopped. `trainer.devices=N` trains with N processes (torchrun).
    """
    with open_run(cfg, run_dir) as run:
        if run.done is not None:
            return run.done
        if run.cfg.trainer.devices > 1 and "LOCAL_RANK" not in os.environ:
            return launch(run)
        return _fit(run)


def _fit(run: Run) -> dict[str, Any]:
    from dlexp.events import EventWriter

    cfg, run_dir, resume = run.cfg, run.dir, run.resume
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device, cfg.trainer.deterministic)
    ddp = setup(device.type)
    if ddp.active:
        if device.type == "cuda":
            device = torch.device("cuda", ddp.local_rank)
        if not ddp.main:  # rank 0 speaks for the run
            logging.getLogger("dlexp").setLevel(logging.WARNING)
    data, task, model = build(cfg, device)
    if ddp.world > 1:
        if not task.ddp_ready:
            raise DlexpError(
                f"trainer.devices={ddp.world}: task {type(task).__name__} steps parts of its "
                "model separately, which DistributedDataParallel cannot synchronise; use "
                "trainer.devices=1."
            )
        log.info(
            f"{ddp.world} processes x data.batch_size {cfg.data.batch_size} = global batch "
            f"{ddp.world * cfg.data.batch_size} (each process trains on its shard of every epoch)"
        )

    # One optimizer per parameter group the task names (a GAN: `optimizer` and `optimizer_d`).
    groups = task.parameter_groups(model)
    optimizers = {key: build_optimizer(cfg[key], params, device) for key, params in groups.items()}
    # Resuming appends to the run's TensorBoard log; purge_step drops what was logged after
    # the checkpoint, so no step appears twice.
    purge = resume["loop"]["step"] + 1 if resume else None
    writer = EventWriter(str(run_dir), purge_step=purge) if ddp.main else NullWriter()
    trainer = Trainer(
        cfg.trainer,
        device,
        run_dir,
        cfg.seed,
        writer,
        yaml_text(OmegaConf.to_container(cfg, resolve=True)),  # (libyaml: ~1 ms, not ~9)
        resume_command=run.resume_command,
        dist=ddp,
        run_id=run.id,
    )
    steps = trainer.steps_per_epoch(len(data.train), cfg.data.batch_size) * cfg.trainer.epochs
    scheduler, interval = build_scheduler(cfg.scheduler, optimizers["optimizer"], steps)
    n_params = sum(p.numel() for params in groups.values() for p in params)
    log.info(
        f"{type(model).__name__} ({n_params:,} parameters) on {data.meta.name}: "
        f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test samples, "
        f"device {device}"
    )
    run.started = True
    try:
        metrics = trainer.fit(
            task,
            model,
            data,
            optimizers,
            scheduler,
            interval,
            cfg.data.batch_size,
            cfg.data.eval_batch_size,
            hparams_of(cfg, run_dir),
            resume,
            cfg.get("objective"),
        )
    except (Diverged, Interrupted) as err:
        status = "diverged" if isinstance(err, Diverged) else "interrupted"
        if ddp.main:
            write_metrics(
                run_dir,
                {
                    "status": status,
                    "message": str(err),
                    "epochs": trainer.loop.epoch,
                    "steps": trainer.loop.step,
                },
            )
        raise
    finally:
        writer.close()
    metrics["status"] = "completed"
    if ddp.main:
        write_metrics(run_dir, metrics)
    split = "test/" if any(k.startswith("test/") for k in metrics) else "train/"
    shown = "  ".join(  # per-class values are in metrics.json and `dlexp eval`
        f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith(split) and k.count("/") == 1
    )
    log.info(f"final {shown}")
    log.info(f"run saved in {run_dir}")
    return metrics
