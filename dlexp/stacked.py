"""A group of small models trained as one stacked model: the batched launcher's step.

The course's grids train hundreds of tiny nets (a 2-1-1 net on 200 points, 1,000 full-batch
epochs): one after another, each step is a handful of microsecond ops and the loop around them
costs more than the maths. Here the jobs' weights are stacked along a leading job dimension,
each Linear layer is one batched matmul for all of them, the loss and metric sums are the
task's own (its `loss` and `sums` take a leading job dimension), and `StackedOptimizer`
applies each job's own learning rate, momentum, betas, eps, weight decay and L1. Each job keeps
its own data (its seed draws and splits it) and its own epoch order.

The engine (dlexp.trainer) and the per-job records (dlexp.record) are those of every run: a
job's history, checkpoints (in torch's formats: resumable alone), metrics.json and TensorBoard
records are a sequential run's. `why_not_stacked` says which jobs may be grouped, from what
the model, task and data declare and what this step implements.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from hydra.utils import get_class, get_object
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dlexp.data import Data
from dlexp.device import autocast, autocast_dtype
from dlexp.steps import epoch_generator, set_mode, steps_per_epoch
from dlexp.tasks.base import Task

# The layers a stacked forward computes: Linear (a batched matmul), element-wise activations
# (they act on any shape) and Flatten.
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.Identity)


# Values that may differ between the jobs of a group: each job carries its own (the rest of
# their configs must be equal: `group_key`).
PER_JOB = (
    "seed",
    "data.source.seed",
    "optimizer.lr",
    "optimizer.momentum",
    "optimizer.weight_decay",
    "optimizer.betas",
    "optimizer.alpha",
    "optimizer.eps",
    "trainer.l1",
    "model.init",
    "model.init_std",
    "trainer.progress",
    "trainer.overwrite",
    "sweep.resume",
)


def group_key(cfg: DictConfig) -> str:
    """Jobs with equal keys differ only in PER_JOB values."""
    import json

    node = OmegaConf.to_container(cfg, resolve=True)
    for key in PER_JOB:
        *parents, leaf = key.split(".")
        parent = node
        for name in parents:
            parent = parent.get(name) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(leaf, None)
    return json.dumps(node, sort_keys=True, default=str)


def _declared(target: str, node: dict[str, Any], what: str) -> str | None:
    """What a class (or data loader) declares about stacking: its `why_not_stacked(**settings)`
    says why these settings cannot be stacked (None: they can); without one it cannot."""
    obj = get_object(target)
    declared = getattr(obj, "why_not_stacked", None)
    if declared is None:
        return f"{what} {getattr(obj, '__name__', target)} has no stacked form"
    return declared(**{k: v for k, v in node.items() if not k.startswith("_")})


def why_not_stacked(cfg: DictConfig) -> str | None:
    """Why this job cannot be trained in a stacked group (None: it can)."""
    from dlexp.models import NOT_ARGUMENTS

    model = OmegaConf.to_container(cfg.model, resolve=True)
    trainer, data = cfg.trainer, cfg.data
    if any(model.get(k) for k in NOT_ARGUMENTS):
        return "it sets, freezes or copies layers (model.constant, freeze, trainable, init_from)"
    checks = [
        lambda: _declared(
            model["_target_"], {k: v for k, v in model.items() if k not in NOT_ARGUMENTS}, "model"
        ),
        lambda: _declared(
            cfg.task._target_,
            {**OmegaConf.to_container(cfg.task, resolve=True), "loss": cfg.get("loss")},
            "task",
        ),
        lambda: _declared(data.source._target_, {}, "data"),
        lambda: StackedOptimizer.why_not(OmegaConf.to_container(cfg.optimizer, resolve=True)),
        lambda: "a scheduler is set" if cfg.scheduler.get("_target_") else None,
        lambda: (
            "trainer.devices or trainer.compile is set"
            if trainer.devices != 1 or trainer.compile
            else None
        ),
        lambda: "gradient clipping is per job" if trainer.grad_clip is not None else None,
        lambda: "trainer.log_weights looks inside each model" if trainer.log_weights else None,
        lambda: (
            "augmentation is random per sample"
            if any((data.get("augment") or {}).values())
            else None
        ),
        lambda: "it resumes another run" if trainer.resume is not None else None,
    ]
    return next((reason for check in checks if (reason := check()) is not None), None)


class StackedOptimizer:
    """SGD, Adam, AdamW and RMSprop as torch computes them, on stacked parameters, with each
    job's own hyperparameters (`groups`: each job's param_group, as its torch optimizer holds
    it). `job_state` is the state_dict job j's own torch optimizer would have
    (tests/test_stacked_optimizer.py holds both to torch.optim)."""

    KINDS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop)
    UNSUPPORTED = ("amsgrad", "centered", "maximize", "dampening", "differentiable")

    @classmethod
    def why_not(cls, cfg: dict[str, Any]) -> str | None:
        kind = get_class(cfg["_target_"])
        if kind not in cls.KINDS:
            return f"optimizer {kind.__name__} is not stacked"
        if any(cfg.get(k) for k in cls.UNSUPPORTED):
            return ", ".join(cls.UNSUPPORTED) + " are not stacked"
        return None

    def __init__(self, kind: type, groups: list[dict[str, Any]], params: dict[str, torch.Tensor]):
        self.kind, self.groups, self.params = kind, groups, params
        device = next(iter(params.values())).device

        def per_job(value) -> torch.Tensor:  # (computed in Python's doubles, as torch does)
            return torch.tensor([float(value(g)) for g in groups], device=device)

        self.h = {
            k: per_job(lambda g, k=k: g.get(k, 0.0))
            for k in ("lr", "momentum", "weight_decay", "eps", "alpha")
        }
        self.h["1-alpha"] = per_job(lambda g: 1 - g.get("alpha", 0.0))
        self.h["1-lr*wd"] = per_job(lambda g: 1 - g["lr"] * g.get("weight_decay", 0.0))
        self.adam = issubclass(kind, torch.optim.Adam) or kind is torch.optim.AdamW
        if self.adam:  # (float64 for the bias corrections, as torch computes them)
            self.betas = torch.tensor([g["betas"] for g in groups], dtype=torch.float64)
            self.h["1-beta1"] = per_job(lambda g: 1 - g["betas"][0])
            self.h["beta2"] = per_job(lambda g: g["betas"][1])
            self.h["1-beta2"] = per_job(lambda g: 1 - g["betas"][1])
        self.lrs = torch.tensor([g["lr"] for g in groups], dtype=torch.float64)
        self.nesterov = bool(groups[0].get("nesterov"))
        self.decoupled = kind is torch.optim.AdamW or bool(groups[0].get("decoupled_weight_decay"))
        self.uses_momentum = bool(self.h["momentum"].any())
        self.decay = bool(self.h["weight_decay"].any())
        self.step_count = 0
        self.state: dict[str, dict[str, torch.Tensor]] = {name: {} for name in params}

    def _h(self, key: str, p: torch.Tensor) -> torch.Tensor:
        return self._view(self.h[key], p)

    @staticmethod
    def _view(values: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return values.view(-1, *([1] * (p.dim() - 1)))  # one value per job, broadcast

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        if self.adam:  # torch's step size lr / (1 - beta1^t) and sqrt(1 - beta2^t), in doubles
            bc1, bc2 = (1 - self.betas**self.step_count).unbind(1)
            device = next(iter(self.params.values())).device
            size, root = (self.lrs / bc1).float().to(device), bc2.sqrt().float().to(device)
        for name, p in self.params.items():
            g, s, lr = p.grad, self.state[name], self._h("lr", p)
            if self.decay and not (self.adam and self.decoupled):
                g = g + self._h("weight_decay", p) * p
            if self.kind is torch.optim.SGD:
                if self.uses_momentum:
                    buf = s.get("momentum_buffer")
                    s["momentum_buffer"] = buf = (
                        g.clone() if buf is None else buf.mul_(self._h("momentum", p)).add_(g)
                    )
                    g = g + self._h("momentum", p) * buf if self.nesterov else buf
                p.sub_(lr * g)
            elif self.adam:
                if self.decay and self.decoupled:
                    p.mul_(self._h("1-lr*wd", p))
                m = s.setdefault("exp_avg", torch.zeros_like(p))
                v = s.setdefault("exp_avg_sq", torch.zeros_like(p))
                m.lerp_(g, self._h("1-beta1", p))
                v.mul_(self._h("beta2", p)).add_(self._h("1-beta2", p) * g * g)
                denom = (v.sqrt() / self._view(root, p)).add_(self._h("eps", p))
                p.sub_(self._view(size, p) * (m / denom))
            else:  # RMSprop
                sq = s.setdefault("square_avg", torch.zeros_like(p))
                sq.mul_(self._h("alpha", p)).add_(self._h("1-alpha", p) * g * g)
                g = g / sq.sqrt().add_(self._h("eps", p))
                if self.uses_momentum:
                    buf = s.setdefault("momentum_buffer", torch.zeros_like(p))
                    g = buf.mul_(self._h("momentum", p)).add_(g)
                p.sub_(lr * g)

    def job_state(self, j: int, state=None, steps: int | None = None) -> dict[str, Any]:
        """Job j's optimizer state as its own torch optimizer's state_dict() holds it."""
        state = self.state if state is None else state
        steps = self.step_count if steps is None else steps
        group = self.groups[j]
        out = {}
        for i, name in enumerate(self.params):
            if not steps or (self.kind is torch.optim.SGD and not group["momentum"]):
                continue  # (torch keeps no state before a step, nor for plain SGD)
            entry = {k: v[j].clone() for k, v in state[name].items()}
            if self.kind is torch.optim.RMSprop and not group["momentum"]:
                entry.pop("momentum_buffer", None)
            if self.kind is not torch.optim.SGD:
                entry = {"step": torch.tensor(float(steps)), **entry}
            out[i] = entry
        return {"state": out, "param_groups": [group]}

    def load_job_state(self, j: int, saved: dict[str, Any]) -> None:
        for i, name in enumerate(self.params):
            for k, v in saved["state"].get(i, {}).items():
                if k == "step":
                    self.step_count = int(v)
                elif v is not None:
                    p = self.params[name]
                    self.state[name].setdefault(k, torch.zeros_like(p))[j] = v.to(p.device)


class StackedStep:
    """A group's steps on its stacked models (see the module's docstring)."""

    def __init__(
        self,
        task: Task,
        models: list[nn.Module],
        datas: list[Data],
        groups: list[dict[str, Any]],
        kind: type,
        cfg: Any,  # dlexp.trainer.TrainerSettings
        device: torch.device,
        seeds: list[int],
        l1: list[float],
    ) -> None:
        self.task, self.models, self.datas = task, [m.to(device) for m in models], datas
        self.cfg, self.device, self.seeds = cfg, device, seeds
        self.n = len(models)
        self.dtype = autocast_dtype(cfg.precision, device)
        template = self.models[0]
        self.names = [n for n, _ in template.named_parameters()]
        self.params = {
            n: torch.stack([dict(m.named_parameters())[n].detach() for m in self.models])
            .clone()
            .requires_grad_()
            for n in self.names
        }
        self.layers = [m for m in template.modules() if not list(m.children())]
        self.linear = {id(m): name for name, m in template.named_modules()}
        self.weights = [n for n in self.names if n.endswith("weight")]  # what L1 applies to
        self.n_weights = sum(self.params[n][0].numel() for n in self.weights)
        self.l1 = torch.tensor(l1, device=device)
        self.splits = {
            split: (
                torch.stack([getattr(d, split).x for d in datas]),
                torch.stack([getattr(d, split).y for d in datas]),
            )
            for split in ("train", "val", "test")
        }
        self.optimizer = StackedOptimizer(kind, groups, self.params)
        self._best: dict[str, Any] | None = None
        self.frozen: dict[int, dict[str, torch.Tensor]] = {}

    # ---------------------------------------------------------------- the maths
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All jobs' models on their own inputs: x is (jobs, batch, features...)."""
        for layer in self.layers:
            if isinstance(layer, nn.Flatten):
                x = x.flatten(2)
            elif isinstance(layer, nn.Linear):
                name = self.linear[id(layer)]
                w, b = self.params[f"{name}.weight"], self.params[f"{name}.bias"]
                x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
            else:  # element-wise (why_not_stacked admits nothing else)
                x = layer(x)
        return x

    def steps_per_epoch(self, batch_size: int) -> int:
        n = self.splits["train"][0].shape[1]
        return steps_per_epoch(n, batch_size, 1, self.cfg.max_steps_per_epoch)

    def batches(self, epoch: int, start: int, batch_size: int) -> Iterator[tuple]:
        """As Data.batches for each job: its own order (its seed and the epoch), the whole split
        unshuffled when one batch holds it."""
        x, y = self.splits["train"]
        n = x.shape[1]
        if batch_size >= n:
            yield x, y
            return
        order = torch.stack(
            [torch.randperm(n, generator=epoch_generator(seed, epoch)) for seed in self.seeds]
        ).to(self.device)
        for i in range(start * batch_size, n, batch_size):
            idx = order[:, i : i + batch_size]
            yield _gather(x, idx), _gather(y, idx)

    batch_dim = 1  # (jobs, batch, ...)

    def begin(self, fresh: bool) -> None:
        pass  # (the stacked tasks prepare nothing)

    def start_epoch(self, epoch: int) -> None:
        pass

    def train(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """One step of every job: the task's loss (one per job), the L1 term, the update."""
        with autocast(self.dtype, self.device):
            out = self.forward(x)
            loss = self.task.loss(out, y)
            total = loss
            if self.l1.any():  # l1 x the mean absolute weight, as ModuleStep adds it
                reg = sum(self.params[w].abs().flatten(1).sum(1) for w in self.weights)
                total = loss + self.l1 * reg / self.n_weights
        total.sum().backward()
        self.optimizer.step()
        for p in self.params.values():
            p.grad = None
        loss = loss.detach()
        return loss, self.task.sums(out.detach(), y, loss, x)

    def end_epoch(self) -> None:
        pass

    def lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.groups]

    @torch.no_grad()
    def evaluate(self, split: str, batch_size: int, keep: bool = False):
        x, y = self.splits[split]
        if not x.shape[1]:
            return {}, None
        sums: dict[str, torch.Tensor] = {}
        outputs = []
        for i in range(0, x.shape[1], batch_size):
            xb, yb = x[:, i : i + batch_size], y[:, i : i + batch_size]
            with autocast(self.dtype, self.device):
                out = self.forward(xb)
                batch_sums = self.task.sums(out, yb, self.task.loss(out, yb), xb)
            for k, v in batch_sums.items():
                sums[k] = sums[k] + v if k in sums else v
            if keep:
                outputs.append(out.float())
        return sums, torch.cat(outputs, 1) if keep else None

    def module(self, j: int) -> nn.Module:
        """Job j's own model with its current weights (for the task's reports)."""
        model = self.models[j]
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(self.params[n][j])
        set_mode(model, False)
        return model

    # ------------------------------------------------------------- checkpoints
    def state(self, j: int, params=None, opt=None) -> dict[str, Any]:
        """Job j's checkpointed tensors in torch's formats, as its ModuleStep would hold them."""
        params = self.params if params is None else params
        return {
            "model": {n: params[n][j].detach().clone() for n in self.names},
            "optimizers": {"optimizer": opt or self.optimizer.job_state(j)},
            "scheduler": None,
            "scaler": {},  # (fp32: a disabled GradScaler's state)
            "rng": None,  # (a stacked job draws nothing from torch's generators)
        }

    def load(self, j: int, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for n in self.names:
                self.params[n][j] = state["model"][n].to(self.device)
        self.optimizer.load_job_state(j, state["optimizers"]["optimizer"])

    def keep_best(self, improved: np.ndarray) -> None:
        """The improved jobs' current state becomes their best (kept stacked, in memory)."""
        if not improved.any():
            return
        idx = torch.from_numpy(np.flatnonzero(improved)).to(self.device)
        opt = self.optimizer
        if self._best is None:
            self._best = {
                "params": {n: p.detach().clone() for n, p in self.params.items()},
                "opt": {n: {k: v.clone() for k, v in s.items()} for n, s in opt.state.items()},
                "steps": np.zeros(self.n, dtype=int),
            }
        else:
            for n, p in self.params.items():
                self._best["params"][n][idx] = p.detach()[idx]
            for n, s in opt.state.items():
                kept = self._best["opt"][n]
                for k, v in s.items():
                    if k not in kept:
                        kept[k] = v.clone()
                    kept[k][idx] = v[idx]
        self._best["steps"][improved] = opt.step_count

    def best_state(self, j: int) -> dict[str, Any]:
        best = self._best
        steps = int(best["steps"][j])
        return self.state(j, best["params"], self.optimizer.job_state(j, best["opt"], steps))

    def freeze(self, j: int) -> None:
        """Job j stopped early: its weights now are its final ones (the group goes on)."""
        self.frozen[j] = {n: p[j].detach().clone() for n, p in self.params.items()}

    def thaw(self) -> None:
        """Put the stopped jobs' final weights back, for the final scores."""
        with torch.no_grad():
            for j, params in self.frozen.items():
                for n, value in params.items():
                    self.params[n][j] = value


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t[j, idx[j]] for every job j."""
    return t.gather(1, idx.view(*idx.shape, *[1] * (t.dim() - 2)).expand(-1, -1, *t.shape[2:]))
