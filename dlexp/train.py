"""`train(cfg)`: build data, task, model and optimizer from a composed config, then fit."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dlexp.checkpoint import find_checkpoint, load_checkpoint
from dlexp.data import load_data
from dlexp.distributed import NullWriter, setup
from dlexp.errors import DlexpError
from dlexp.models import build_model
from dlexp.tasks import build_task
from dlexp.trainer import Diverged, Interrupted, Trainer, pick_device, write_metrics

log = logging.getLogger("dlexp")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# (key, test, what would work) for the values that have a valid range.
_CHECKS = [
    ("seed", lambda v: isinstance(v, int), "an integer, e.g. seed=1"),
    (
        "trainer.epochs",
        lambda v: isinstance(v, int) and v >= 1,
        "a whole number >= 1, e.g. trainer.epochs=5",
    ),
    (
        "data.batch_size",
        lambda v: isinstance(v, int) and v >= 1,
        "a whole number >= 1, e.g. data.batch_size=32",
    ),
    ("data.eval_batch_size", lambda v: isinstance(v, int) and v >= 1, "a whole number >= 1"),
    (
        "optimizer.lr",
        lambda v: isinstance(v, int | float) and v > 0,
        "a positive number, e.g. optimizer.lr=0.001",
    ),
    (
        "trainer.precision",
        lambda v: v in ("auto", "fp32", "bf16", "fp16"),
        "auto, fp32, bf16 or fp16",
    ),
    ("trainer.progress", lambda v: v in ("auto", "bar", "log", "none"), "auto, bar, log or none"),
    (
        "device.type",
        lambda v: v in ("auto", "cpu", "cuda", "mps") or str(v).startswith("cuda:"),
        "auto, cpu, cuda (or cuda:N) or mps",
    ),
]


def check_config(cfg: DictConfig) -> None:
    """Refuse missing, out-of-range or mistyped values before any work starts."""
    # ??? values, and the keys an experiment lists under `requires` (a ??? cannot replace a
    # value the model config already set, so experiments name their required keys there).
    missing = sorted(OmegaConf.missing_keys(cfg))
    missing += [k for k in cfg.get("requires") or [] if OmegaConf.select(cfg, k) in (None, "")]
    if missing:
        raise DlexpError(
            f"{', '.join(missing)} must be given for this config, e.g. dlexp train ... "
            f"{missing[0]}=<value> (for model.init_from: a run folder or checkpoint file)."
        )
    for key, ok, hint in _CHECKS:
        value = OmegaConf.select(cfg, key)
        if value is not None and not (ok(value) and not isinstance(value, bool)):
            raise DlexpError(f"{key}={value!r} is not valid: it must be {hint}.")


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
    extra = {}
    if "fused" in cfg and cfg.fused is None:
        extra["fused"] = device.type in ("cpu", "cuda")
    return instantiate(cfg, params=params, **extra)


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


def default_run_dir(cfg: DictConfig) -> Path:
    """Outside the CLI (tests, notebooks) runs land in <out_root>/runs/<time>_<model>_<data>."""
    model = cfg.model._target_.rsplit(".", 1)[-1].lower()
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    base = Path(cfg.out_root) / "runs" / f"{stamp}_{model}_{cfg.data.name}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def hydra_run_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def hparams_of(cfg: DictConfig) -> dict[str, Any]:
    """What the HParams tab compares runs by: the group choices, the overrides, key settings."""
    from hydra.core.hydra_config import HydraConfig

    out: dict[str, Any] = {}
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        out.update({k: str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra")})
        for override in hc.overrides.task:
            key, _, value = override.partition("=")
            out[key.lstrip("+~")] = value
    for key in ("optimizer.lr", "data.batch_size", "trainer.epochs", "seed"):
        out.setdefault(key, OmegaConf.select(cfg, key))
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in out.items()}


def build(cfg: DictConfig, device: torch.device):
    """Data (on the device), task and model for a config; shared by train and eval."""
    data = load_data(cfg.data, cfg.seed).to(device)
    task = build_task(cfg.task, cfg.data.task, data.meta, cfg.get("loss"))
    torch.manual_seed(cfg.seed)  # the same initial weights whatever the data loading did
    model = build_model(cfg.model, data.meta, task.num_outputs)
    return data, task, model


def resumed_config(stored_yaml: str, cfg: DictConfig) -> DictConfig:
    """The checkpoint's config, plus the value overrides of this command (e.g. more epochs)."""
    from hydra.core.hydra_config import HydraConfig

    stored = OmegaConf.create(stored_yaml)
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        for override in hc.overrides.task:
            key = override.partition("=")[0].lstrip("+~")
            if key in ("trainer.resume", "hydra.run.dir", "hydra.output_subdir"):
                continue
            if key in hc.runtime.choices:
                if OmegaConf.select(cfg, key) == OmegaConf.select(stored, key):
                    continue  # the choice the run already has (the same command run again)
                raise DlexpError(
                    f"{override!r} cannot change a run that is being resumed: it keeps the "
                    f"model, data and other choices it was started with. Start a new run "
                    f"instead, or resume with value overrides only (e.g. trainer.epochs=20)."
                )
            OmegaConf.update(stored, key, OmegaConf.select(cfg, key), force_add=True)
    stored.trainer.resume = None
    stored.trainer.progress = cfg.trainer.progress
    return stored


def _interrupted(run_dir: Path) -> bool:
    """A run stopped by a signal whose folder is used again continues instead of restarting."""
    try:
        status = json.loads((run_dir / "metrics.json").read_text()).get("status")
    except (OSError, ValueError):
        return False
    return status == "interrupted" and (run_dir / "checkpoints" / "last.pt").is_file()


def run_folder_of(checkpoint: Path) -> Path:
    return (
        checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    )


def train(cfg: DictConfig, run_dir: Path | None = None) -> dict[str, Any]:
    """Train the configured model; returns the final metrics (also in <run_dir>/metrics.json).

    With `trainer.resume=<run folder or checkpoint>` it continues that run, in its folder,
    from its last checkpoint, exactly as if it had never stopped.
    """
    from torch.utils.tensorboard import SummaryWriter

    check_config(cfg)
    resume = None
    if cfg.trainer.get("resume"):
        path = find_checkpoint(cfg.trainer.resume, "last")
        resume = load_checkpoint(path)
        cfg = resumed_config(resume["config"], cfg)
        check_config(cfg)
        run_dir = run_folder_of(path)
        log.info(f"resuming {run_dir} from {path.name}")
    run_dir = Path(run_dir or hydra_run_dir() or default_run_dir(cfg))
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume is None and _interrupted(run_dir):  # e.g. a pre-empted SLURM job, requeued
        resume = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        cfg = resumed_config(resume["config"], cfg)
        log.info(f"continuing the interrupted run in {run_dir} from its last checkpoint")
    done = run_dir / "metrics.json"
    if cfg.get("sweep", {}).get("resume") and done.is_file():
        metrics = json.loads(done.read_text())
        if metrics.get("status") == "completed":
            log.info(f"{run_dir.name}: already finished, skipped (sweep.resume=true)")
            return metrics
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
        if task.manual:
            raise DlexpError(
                f"trainer.devices={ddp.world}: task {cfg.task.name!r} runs its own optimizer steps "
                "and is not supported across processes yet; use trainer.devices=1."
            )
        log.info(
            f"{ddp.world} processes x data.batch_size {cfg.data.batch_size} = global batch "
            f"{ddp.world * cfg.data.batch_size} (each process trains on its shard of every epoch)"
        )

    # One optimizer per parameter group the task names (a GAN: `optimizer` and `optimizer_d`).
    groups = task.parameter_groups(model)
    optimizers = {key: build_optimizer(cfg[key], params, device) for key, params in groups.items()}
    steps = math.ceil(len(data.train) / cfg.data.batch_size) * cfg.trainer.epochs
    scheduler, interval = build_scheduler(cfg.scheduler, optimizers["optimizer"], steps)
    n_params = sum(p.numel() for params in groups.values() for p in params)
    log.info(
        f"{type(model).__name__} ({n_params:,} parameters) on {data.meta.name}: "
        f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test samples, "
        f"device {device}"
    )

    # Resuming appends to the run's TensorBoard log; purge_step drops what was logged after
    # the checkpoint, so no step appears twice.
    purge = resume["step"] + 1 if resume else None
    writer = SummaryWriter(str(run_dir), purge_step=purge) if ddp.main else NullWriter()
    trainer = Trainer(
        cfg.trainer,
        device,
        run_dir,
        cfg.seed,
        writer,
        OmegaConf.to_yaml(cfg, resolve=True),
        resume_command=f"dlexp train trainer.resume={run_dir}",
        dist=ddp,
    )
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
            hparams_of(cfg),
            resume,
        )
    except (Diverged, Interrupted) as err:
        status = "diverged" if isinstance(err, Diverged) else "interrupted"
        pos = getattr(trainer, "pos", {})
        if ddp.main:
            write_metrics(
                run_dir,
                {
                    "status": status,
                    "message": str(err),
                    "epochs": pos.get("epoch"),
                    "steps": pos.get("step"),
                },
            )
        raise
    finally:
        writer.close()
    metrics["status"] = "completed"
    if ddp.main:
        write_metrics(run_dir, metrics)
    split = "test/" if any(k.startswith("test/") for k in metrics) else "train/"
    shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith(split))
    log.info(f"final {shown}")
    log.info(f"run saved in {run_dir}")
    return metrics
