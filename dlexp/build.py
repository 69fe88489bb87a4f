"""From a composed config to what trains: data, task, model, optimizers and scheduler (all
through Hydra's instantiate), and back from a checkpoint to its model (`load_run`)."""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from dlexp.checkpoint import find_checkpoint, load_checkpoint
from dlexp.checks import check_config
from dlexp.data import Data, DataMeta, load_data
from dlexp.data.load import DataSettings
from dlexp.device import DeviceSettings
from dlexp.errors import DlexpError
from dlexp.models import build_model
from dlexp.settings import Count, NonNegative, NonNegativeInt, Positive, Range
from dlexp.tasks import build_task
from dlexp.tasks.base import Task
from dlexp.trainer import TrainerSettings


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class OptimizerSettings:
    """Ranges of the keys every optimizer config (`optimizer`, a GAN's `optimizer_d`) may set,
    stated once (dlexp.checks; their types are the optimizer class's signature)."""

    lr: Positive
    momentum: Annotated[float, Range(0, 1, open_high=True, says="a number in [0, 1)")]
    weight_decay: NonNegative


@dataclass
class SweepSettings:
    resume: bool
    fresh_weights: bool


@dataclass
class ReportSettings:
    """How `dlexp report` scores a sweep's jobs (read there, stated here)."""

    metric: str | None
    last: Count


@dataclass
class RunSettings:
    """The top-level keys of `dlexp train`'s config that a run reads."""

    seed: NonNegativeInt
    init_seed: NonNegativeInt | None
    objective: str | None
    sweep: SweepSettings
    report: ReportSettings


# Each group dlexp itself reads, and where its keys' types and ranges are stated (dlexp.checks;
# the nodes built with _target_ are checked against their classes' signatures): composed
# configs (dlexp.run) and the configs stored in checkpoints (load_run) alike.
SETTINGS = {
    "": RunSettings,
    "trainer": TrainerSettings,
    "data": DataSettings,
    "device": DeviceSettings,
    "optimizer": OptimizerSettings,
    "optimizer_d": OptimizerSettings,
}


def optimizer_args(cfg: DictConfig, device: torch.device) -> tuple[type, dict[str, Any]]:
    """An optimizer config's class and arguments; `fused: null` means fused kernels where
    torch has them (CPU, CUDA)."""
    kwargs = OmegaConf.to_container(cfg, resolve=True)  # (instantiate: ~30 ms, this: ~0.1)
    kind = get_class(kwargs.pop("_target_"))
    if kwargs.get("nesterov") and (not kwargs.get("momentum") or kwargs.get("dampening")):
        raise DlexpError(  # (torch's SGD refuses it too, with a traceback)
            f"optimizer.nesterov=true needs momentum and no dampening, but optimizer.momentum="
            f"{kwargs.get('momentum')}: set optimizer.momentum (e.g. 0.9), or nesterov=false."
        )
    if "fused" in kwargs and kwargs["fused"] is None:
        kwargs["fused"] = device.type in ("cpu", "cuda")
    return kind, kwargs


def build_optimizer(cfg: DictConfig, params: list, device: torch.device) -> torch.optim.Optimizer:
    kind, kwargs = optimizer_args(cfg, device)
    return kind(params, **kwargs)


# What torch's optimizers put in a param_group beyond their own signature's defaults.
IMPLIED: dict[type, dict[str, Any]] = {torch.optim.AdamW: {"decoupled_weight_decay": True}}


def param_group(cfg: DictConfig, n_params: int, device: torch.device) -> dict[str, Any]:
    """The param_group that the config's torch optimizer holds (as its state_dict() lists it),
    without building one: building any torch optimizer imports torch._dynamo (~1 s), which a
    stacked group need not pay. tests/test_stacked_optimizer.py holds it to torch's own."""
    kind, kwargs = optimizer_args(cfg, device)
    group = {}
    for cls in reversed([c for c in kind.__mro__ if c is not object]):
        for name, p in inspect.signature(cls.__init__).parameters.items():
            if name not in ("self", "params") and p.default is not inspect.Parameter.empty:
                group[name] = p.default
        group.update(IMPLIED.get(cls, {}))
    group.update(kwargs)
    if "betas" in group:
        group["betas"] = tuple(group["betas"])
    return {**group, "params": list(range(n_params))}


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    """The scheduler (or None) and whether it steps per `epoch` or per `step`. A scheduler
    that takes `total_steps` (OneCycleLR) and is not given it gets the run's."""
    if cfg.get("_target_") is None:
        return None, "epoch"
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    interval = kwargs.pop("interval", "epoch")
    kind = get_class(kwargs.pop("_target_"))
    if "total_steps" in inspect.signature(kind).parameters and kwargs.get("total_steps") is None:
        kwargs["total_steps"] = total_steps
    try:
        return kind(optimizer, **kwargs), interval
    except ZeroDivisionError as err:  # OneCycleLR with too few steps
        raise DlexpError(
            f"scheduler={kind.__name__} cannot warm up and anneal in only {total_steps} steps; "
            "train for more epochs or with a smaller data.batch_size, or choose another scheduler."
        ) from err


@dataclass
class LoadedRun:
    path: Path  # the checkpoint file
    cfg: DictConfig
    meta: DataMeta
    model: torch.nn.Module  # with the checkpoint's weights, on the CPU
    state: dict[str, Any]


def load_run(run: str | Path, which: str = "last") -> LoadedRun:
    """A finished run's config, data metadata and model (with its weights) from a run folder
    or checkpoint file; for `dlexp eval`, `dlexp sample`, `model.init_from` and the runs a task
    uses (a GAN's quality classifier)."""
    path = find_checkpoint(run, which)
    state = load_checkpoint(path)
    cfg = OmegaConf.create(state["config"])
    check_config(cfg, SETTINGS)  # a stored config is data: checked as a composed one, and
    cfg.model.init_from = None  # only what dlexp may build is built; the checkpoint already
    # holds every weight
    meta = DataMeta(**state["meta"])
    meta.input_shape = tuple(meta.input_shape)
    task = build_task(cfg.task, meta, None)
    model = build_model(cfg.model, meta, task.num_outputs)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise DlexpError(
            f"{path} does not match the model its config describes: {str(err).splitlines()[0]}"
        ) from err
    return LoadedRun(path, cfg, meta, model, state)


def build(
    cfg: DictConfig, device: torch.device, task: Task | None = None
) -> tuple[Data, Task, torch.nn.Module]:
    """Data (on the device), task and model for a config (the jobs of a stacked group share
    one `task`). The runs a config starts from are loaded here: `model.init_from`'s weights,
    and those a task names (`Task.runs`)."""
    data = load_data(cfg.data, cfg.seed).to(device)
    if task is None:
        task = build_task(cfg.task, data.meta, cfg.get("loss"))
        task.use_runs({key: load_run(path) for key, path in task.runs().items()})
    start_from = None
    if cfg.model.get("init_from"):  # another run's model, rebuilt and checked like any run
        source = load_run(cfg.model.init_from)
        start_from = (source.path, source.model.state_dict())
    # The same initial weights whatever the data loading did; init_seed draws other ones (a
    # sweep's jobs with sweep.fresh_weights) on the same data.
    torch.manual_seed(cfg.seed if cfg.get("init_seed") is None else cfg.init_seed)
    model = build_model(cfg.model, data.meta, task.num_outputs, start_from)
    return data, task, model
