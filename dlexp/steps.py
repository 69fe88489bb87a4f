"""How the jobs of a group take their training steps: the one thing that differs between a
single run and a stacked group.

The engine (dlexp.trainer) drives a step object through the same methods whatever the group:
`batches` (an epoch's data order), `train` (one optimizer step on a batch: the loss and the
metric sums, one value per job), `evaluate` (a split's sums and outputs), `state`/`load`
(a job's checkpointed tensors in torch's own formats), `keep_best`/`best_state`, `freeze` (a
job that stopped early keeps its weights), `module` (a job's nn.Module, for the task's reports).

`ModuleStep` is one job: autograd on its nn.Module and torch's optimizers, with every task,
precision, scheduler, gradient clipping, the L1 term, torch.compile and DistributedDataParallel.
`dlexp.stacked.StackedStep` is a group of small models trained as one stacked model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from dlexp.data import Data
from dlexp.device import autocast, autocast_dtype, rng_state, set_rng_state
from dlexp.distributed import Dist
from dlexp.models import hold_frozen
from dlexp.tasks.base import Task


def steps_per_epoch(samples: int, batch_size: int, world: int, cap: int | None) -> int:
    """Optimizer steps in an epoch: a process's share of the batches, capped by
    trainer.max_steps_per_epoch."""
    steps = math.ceil(samples / (batch_size * world))
    return min(steps, cap or steps)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The data order of an epoch depends on the seed and the epoch number alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def mean_abs_weight(model: nn.Module) -> float:
    """The mean absolute value of a model's weights, biases excluded: the quantity the L1 term
    (trainer.l1) penalises, so that a sweep shows the penalty acting (trainer.weight_stats)."""
    weights = [p.detach() for n, p in model.named_parameters() if n.endswith("weight")]
    count = sum(w.numel() for w in weights)
    return float(sum(w.abs().sum() for w in weights) / max(count, 1))


_MODAL = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def set_mode(model: nn.Module, training: bool) -> None:
    """model.train()/eval() walk every module: skip the walk when nothing changes, or when no
    module behaves differently in the two modes (no dropout or batch norm: most course nets)."""
    if model.training == training:
        return
    modal = getattr(model, "_dlexp_modal", None)
    if modal is None:
        modal = any(
            isinstance(m, _MODAL) or type(m).train is not nn.Module.train for m in model.modules()
        )
        model._dlexp_modal = modal
    if modal:
        model.train(training)


class ModuleStep:
    """One job's steps: autograd on its module (see the module's docstring)."""

    n = 1  # jobs
    batch_dim = 0  # where a batch's samples are counted

    def __init__(
        self,
        task: Task,
        model: nn.Module,
        data: Data,
        optimizers: dict[str, torch.optim.Optimizer],
        scheduler: Any,
        interval: str,
        cfg: Any,  # dlexp.trainer.TrainerSettings
        device: torch.device,
        seed: int,
        dist: Dist | None = None,
    ) -> None:
        self.task, self.model, self.datas = task, model, [data]
        self.optimizers, self.scheduler, self.interval = optimizers, scheduler, interval
        self.cfg, self.device, self.seed, self.dist = cfg, device, seed, dist or Dist()
        self.dtype = autocast_dtype(cfg.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
        wants = getattr(model, "channels_last", True)  # a model may opt out (style transfer)
        self.channels_last = bool(cfg.channels_last and has_conv and wants)
        model.to(device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        names = {id(p): n for n, p in model.named_parameters()}
        self.params = {}  # per optimizer: what it updates, and the weights L1 applies to
        for key, opt in optimizers.items():
            params = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
            weights = [p for p in params if names.get(id(p), "").endswith("weight")]
            count = max(1, sum(w.numel() for w in weights))
            self.params[key] = {"all": params, "weights": weights, "count": count}
        self.l1, self.clip = float(cfg.l1), cfg.grad_clip
        self.step_model = model
        if cfg.compile:
            self.step_model = torch.compile(model)
        if self.dist.active:  # gradients averaged over the processes
            ids = [device.index] if device.type == "cuda" else None
            self.step_model = nn.parallel.DistributedDataParallel(self.step_model, device_ids=ids)
        self.main = optimizers.get("optimizer")  # its learning rate is logged (none: scoring)
        self._lr = self.main.param_groups[0]["lr"] if self.main else 0.0  # the epoch's rate
        self._best: dict[str, Any] | None = None

    # ---------------------------------------------------------------- training
    def steps_per_epoch(self, batch_size: int) -> int:
        n = len(self.datas[0].train)
        return steps_per_epoch(n, batch_size, self.dist.world, self.cfg.max_steps_per_epoch)

    def batches(self, epoch: int, start: int, batch_size: int) -> Iterator[tuple]:
        """Epoch `epoch`'s batches from batch `start` on. The data order depends on the seed and
        the epoch; one batch of the whole split needs none (its order changes no sum)."""
        data = self.datas[0]
        whole = batch_size >= len(data.train) and self.dist.world == 1
        return data.batches(
            data.train,
            batch_size,
            None if whole else epoch_generator(self.seed, epoch),
            train=True,
            start=start * batch_size,
            shard=(self.dist.rank, self.dist.world),
        )

    def begin(self, fresh: bool) -> None:
        """Once before training (`fresh`: not resumed): the task's own preparation."""
        self.task.begin(self.model, self.datas[0], fresh)

    def start_epoch(self, epoch: int) -> None:
        if hasattr(self.model, "dlexp_frozen_until"):
            hold_frozen(self.model, epoch)
        set_mode(self.model, True)
        self._lr = self.main.param_groups[0]["lr"]

    def train(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """One step of the task (its loss, metric sums), then the per-step scheduler."""
        loss, sums = self.task.train_step(self.step_model, self._memory_format(x), y, self._step)
        self.scaler.update()  # once per step, after every optimizer of the task stepped
        if self.scheduler is not None and self.interval == "step":
            self._lr = self.main.param_groups[0]["lr"]  # the one just used
            self.scheduler.step()
        return loss, sums

    def _step(self, key: str, compute) -> torch.Tensor:
        """The one way any task's loss becomes an update of optimizer `key`: autocast, the L1
        term (the course's: l1 x the mean absolute weight, biases excluded), scaled backward,
        clipping of that optimizer's gradients, the step."""
        optimizer = self.optimizers[key]
        params = self.params[key]
        l1, clip = self.l1, self.clip
        losses = []

        def closure() -> torch.Tensor:  # L-BFGS evaluates it several times per step
            optimizer.zero_grad(set_to_none=True)
            with autocast(self.dtype, self.device):
                loss = compute()
                if l1:
                    mean_abs = sum(w.abs().sum() for w in params["weights"]) / params["count"]
                    total = loss + l1 * mean_abs
                else:
                    total = loss
            self.scaler.scale(total).backward()
            losses.append(loss.detach())
            if clip and not self.scaler.is_enabled():
                nn.utils.clip_grad_norm_(params["all"], clip)
            return total

        if self.scaler.is_enabled():  # fp16: the scaler steps, and takes no closure
            closure()
            if clip:
                self.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params["all"], clip)
            self.scaler.step(optimizer)
        else:
            optimizer.step(closure)
        return losses[-1]

    def end_epoch(self) -> None:
        if self.scheduler is not None and self.interval == "epoch":
            self.scheduler.step()

    def lr(self) -> list[float]:
        """The learning rate the epoch's steps used."""
        return [self._lr if self.interval == "step" else self.main.param_groups[0]["lr"]]

    def freeze(self, j: int) -> None:
        """A job that stopped early: a single run's loop ends with it."""

    def thaw(self) -> None:
        pass

    # -------------------------------------------------------------- evaluation
    @torch.inference_mode()
    def evaluate(self, split: str, batch_size: int, keep: bool = False):
        """Metric sums over a whole split (and the outputs, if `keep`: (1, N, ...))."""
        data = self.datas[0]
        part = getattr(data, split)
        if not len(part):
            return {}, None
        set_mode(self.model, False)
        self.task.start_eval()
        sums: dict[str, torch.Tensor] = {}
        outputs = []
        for x, y in data.batches(part, batch_size):
            with autocast(self.dtype, self.device):
                batch_sums, out = self.task.eval_step(self.model, self._memory_format(x), y)
            for k, v in batch_sums.items():
                sums[k] = sums[k] + v if k in sums else v
            if keep and out is not None:
                outputs.append(out.float())
        return sums, torch.cat(outputs).unsqueeze(0) if keep and outputs else None

    def module(self, j: int) -> nn.Module:
        set_mode(self.model, False)
        return self.model

    def _memory_format(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    # ------------------------------------------------------------- checkpoints
    def state(self, j: int = 0) -> dict[str, Any]:
        """What a checkpoint holds of the step, in torch's own formats."""
        return {
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
        }

    def load(self, j: int, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if state["rng"] is not None:  # (None: a stacked job's, which drew nothing)
            set_rng_state(state["rng"])

    def keep_best(self, improved: np.ndarray) -> None:
        """The current state becomes the best one (kept in memory until written)."""
        if improved[0]:
            self._best = copy.deepcopy(self.state())

    def best_state(self, j: int) -> dict[str, Any]:
        return self._best
