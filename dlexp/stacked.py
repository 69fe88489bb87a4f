"""A group of sweep jobs trained as one stacked model (the batched launcher's trainer).

The course's grids train hundreds of tiny nets (a 2-1-1 net on 200 points, 1,000 full-batch
epochs): one after another, each step is a handful of microsecond ops and the loop around them
costs more than the maths. Here the jobs' weights are stacked along a leading job dimension,
each layer is one batched matmul for all of them, the loss and metric sums are the task's own
(Task.job_scores), and a functional optimizer applies each job's own learning rate,
momentum, weight decay and L1. Each job keeps its own data (its seed draws and splits it) and
its own epoch order.

Every job still leaves what a sequential run leaves: run folder, .hydra/, train.log, an event
file with its HParams record, checkpoints in the sequential format (each resumable alone with
`trainer.resume=<job folder>`), metrics.json. A job whose loss becomes NaN is marked diverged
and the others go on.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dlexp.checkpoint import FORMAT, LoopState, one_sync, save_checkpoint
from dlexp.events import EventWriter, scalar_head, scalars_event
from dlexp.run import Run, yaml_text
from dlexp.tasks.base import higher_is_better
from dlexp.train import build, hparams_of, resolve_device, seed_everything
from dlexp.trainer import (
    Interrupted,
    autocast,
    autocast_dtype,
    epoch_generator,
    layout,
    log_scalars,
    namespace,
    rng_state,
    stop_signals,
    write_hparams,
    write_metrics,
)

log = logging.getLogger("dlexp")

# Values that may differ between the jobs of a group: each job carries its own.
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
OPTIMIZERS = ("torch.optim.SGD", "torch.optim.Adam", "torch.optim.AdamW", "torch.optim.RMSprop")
TASKS = ("dlexp.tasks.classification.Classification", "dlexp.tasks.regression.Regression")


def why_not_stacked(cfg: DictConfig) -> str | None:
    """Why a job cannot be trained in a group (None: it can)."""
    model, trainer, opt = cfg.model, cfg.trainer, cfg.optimizer
    source = str(cfg.data.get("source", {}).get("_target_", ""))
    checks = [
        (model._target_ != "dlexp.models.mlp.MLP", f"model {model._target_} is not the MLP"),
        (not source.startswith("dlexp.data.tabular."), f"data={cfg.data.name} is not tabular"),
        (bool(model.get("dropout")), "dropout masks are random per step"),
        (bool(model.get("batch_norm")), "batch norm keeps running statistics"),
        (
            bool(model.get("init_from") or model.get("freeze") or model.get("trainable")),
            "it starts from another run or freezes layers",
        ),
        (cfg.task._target_ not in TASKS, f"task {cfg.task._target_} is not stacked"),
        (opt._target_ not in OPTIMIZERS, f"optimizer {opt._target_} is not stacked"),
        (
            any(opt.get(k) for k in ("amsgrad", "centered", "maximize", "dampening")),
            "amsgrad, centered, maximize and dampening are not stacked",
        ),
        (cfg.scheduler.get("_target_") is not None, "a scheduler is set"),
        (trainer.devices != 1 or trainer.compile, "trainer.devices or trainer.compile is set"),
        (trainer.grad_clip is not None, "gradient clipping is per job"),
        (
            trainer.early_stopping.patience is not None,
            "early stopping ends jobs at different epochs",
        ),
        (
            bool(trainer.checkpoint_every_steps or trainer.checkpoint_every_minutes),
            "it checkpoints mid-epoch",
        ),
        (trainer.resume is not None, "it resumes another run"),
        (bool(trainer.get("log_weights")), "trainer.log_weights looks inside each model"),
        (any((cfg.data.get("augment") or {}).values()), "augmentation is random per sample"),
    ]
    return next((reason for failed, reason in checks if failed), None)


def group_key(cfg: DictConfig) -> str:
    """Jobs with equal keys differ only in PER_JOB values."""
    node = OmegaConf.to_container(cfg, resolve=True)
    for key in PER_JOB:
        *parents, leaf = key.split(".")
        parent = node
        for name in parents:
            parent = parent.get(name) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(leaf, None)
    return json.dumps(node, sort_keys=True, default=str)


def param_group(cfg: DictConfig, n_params: int, device: torch.device) -> dict[str, Any]:
    """The param_group torch's optimizer would hold for this config: the class's defaults,
    then the config's values. (Building the optimizer itself imports torch._dynamo, ~1.4 s.)"""
    import inspect

    from hydra.utils import get_class

    kwargs = OmegaConf.to_container(cfg, resolve=True)
    signature = inspect.signature(get_class(kwargs.pop("_target_")).__init__)
    group = {
        name: p.default
        for name, p in signature.parameters.items()
        if name not in ("self", "params") and p.default is not inspect.Parameter.empty
    }
    group.update(kwargs)
    if "fused" in kwargs and kwargs["fused"] is None:
        group["fused"] = device.type in ("cpu", "cuda")
    if "betas" in group:
        group["betas"] = tuple(group["betas"])
    return {**group, "params": list(range(n_params))}


class StackedOptimizer:
    """SGD, Adam(W) and RMSprop as torch computes them, on stacked parameters, with one value
    of each hyperparameter per job (a job's learning rate scales its update)."""

    def __init__(self, kind: str, groups: list[dict[str, Any]], params: dict[str, torch.Tensor]):
        self.kind, self.groups, self.params = kind, groups, params
        device = next(iter(params.values())).device

        def per_job(name: str, default: float = 0.0) -> torch.Tensor:
            return torch.tensor([float(g.get(name, default)) for g in groups], device=device)

        self.h = {k: per_job(k) for k in ("lr", "momentum", "weight_decay", "eps", "alpha")}
        if "betas" in groups[0]:  # (float64 for the bias corrections, as torch computes them)
            self.betas = torch.tensor([g["betas"] for g in groups], dtype=torch.float64)
            self.h["beta1"], self.h["beta2"] = self.betas.float().to(device).unbind(1)
        self.nesterov = bool(groups[0].get("nesterov"))
        self.decoupled = kind == "AdamW" or bool(groups[0].get("decoupled_weight_decay"))
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
        t = self.step_count
        for name, p in self.params.items():
            g, s, lr = p.grad, self.state[name], self._h("lr", p)
            if self.decay and not (self.kind.startswith("Adam") and self.decoupled):
                g = g + self._h("weight_decay", p) * p
            if self.kind == "SGD":
                if self.uses_momentum:
                    buf = s.get("momentum_buffer")
                    s["momentum_buffer"] = buf = (
                        g.clone() if buf is None else buf.mul_(self._h("momentum", p)).add_(g)
                    )
                    g = g + self._h("momentum", p) * buf if self.nesterov else buf
                p.sub_(lr * g)
            elif self.kind.startswith("Adam"):
                if self.decay and self.decoupled:
                    p.mul_(1 - lr * self._h("weight_decay", p))
                b1, b2 = self._h("beta1", p), self._h("beta2", p)
                m = s.setdefault("exp_avg", torch.zeros_like(p))
                v = s.setdefault("exp_avg_sq", torch.zeros_like(p))
                m.lerp_(g, 1 - b1)
                v.mul_(b2).add_((1 - b2) * g * g)
                bc1, bc2 = (1 - self.betas**t).to(p).unbind(1)
                denom = (v.sqrt() / self._view(bc2.sqrt(), p)).add_(self._h("eps", p))
                p.sub_(lr / self._view(bc1, p) * m / denom)
            else:  # RMSprop
                alpha = self._h("alpha", p)
                sq = s.setdefault("square_avg", torch.zeros_like(p))
                sq.mul_(alpha).add_((1 - alpha) * g * g)
                g = g / sq.sqrt().add_(self._h("eps", p))
                if self.uses_momentum:
                    buf = s.setdefault("momentum_buffer", torch.zeros_like(p))
                    g = buf.mul_(self._h("momentum", p)).add_(g)
                p.sub_(lr * g)

    def job_state(self, j: int, names: list[str]) -> dict[str, Any]:
        """Job j's optimizer state as torch's state_dict() of its own optimizer holds it."""
        state = {}
        for i, name in enumerate(names):
            entry = {k: v[j].clone() for k, v in self.state[name].items()}
            if self.kind == "SGD" and self.groups[j].get("momentum", 0) == 0:
                entry = {}
            if self.kind == "RMSprop" and self.groups[j].get("momentum", 0) == 0:
                entry.pop("momentum_buffer", None)
            if self.kind != "SGD":
                entry["step"] = torch.tensor(float(self.step_count))
            if entry:
                state[i] = entry
        return {"state": state, "param_groups": [self.groups[j]]}

    def load_job_state(self, j: int, names: list[str], saved: dict[str, Any]) -> None:
        for i, name in enumerate(names):
            for k, v in saved["state"].get(i, {}).items():
                if k == "step":
                    self.step_count = int(v)
                    continue
                p = self.params[name]
                self.state[name].setdefault(k, torch.zeros_like(p))[j] = v.to(p.device)


class StackedGroup:
    """Jobs (opened runs with equal group keys) trained together; `fit()` returns each job's
    final metrics, as `train(cfg)` would."""

    def __init__(self, runs: list[Run], hydra_cfgs: list[DictConfig | None]) -> None:
        self.runs = runs
        cfg = self.cfg = runs[0].cfg
        self.device = resolve_device(cfg.device, cfg.trainer.deterministic)
        self.dtype = autocast_dtype(cfg.trainer.precision, self.device)
        self.t = namespace(OmegaConf.to_container(cfg.trainer, resolve=True))  # read each epoch
        built, level = [], log.level
        try:
            for k, run in enumerate(runs):
                seed_everything(run.cfg.seed)
                if k == 1:  # the first job's build says what it loaded; the rest would repeat it
                    log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
                built.append(build(run.cfg, self.device, built[0][1] if built else None))
        finally:
            log.setLevel(level)
        self.datas = [d for d, _, _ in built]
        self.task = built[0][1]
        self.models = [m.to(self.device) for _, _, m in built]
        template = self.models[0]
        self.names = [n for n, _ in template.named_parameters()]
        self.params = {
            n: torch.stack([dict(m.named_parameters())[n].detach() for m in self.models])
            .clone()
            .requires_grad_()
            for n in self.names
        }
        self.weights = [n for n in self.names if n.endswith("weight")]  # what L1 applies to
        self.n_weights = sum(self.params[n][0].numel() for n in self.weights)
        self.layers = [(n, m) for n, m in template.named_modules() if not list(m.children())]
        self.splits = {
            split: (
                torch.stack([getattr(d, split).x for d in self.datas]),
                torch.stack([getattr(d, split).y for d in self.datas]),
            )
            for split in ("train", "val", "test")
        }
        kind = cfg.optimizer._target_.rsplit(".", 1)[-1]
        groups = [param_group(r.cfg.optimizer, len(self.names), self.device) for r in runs]
        self.optimizer = StackedOptimizer(kind, groups, self.params)
        self.l1 = torch.tensor([float(r.cfg.trainer.l1) for r in runs], device=self.device)
        n_val = len(self.datas[0].val)
        self.monitor = f"val/{self.task.monitor}" if n_val else f"train/{self.task.monitor}"
        if cfg.get("objective") and str(cfg.objective).startswith(("val/", "train/")):
            self.monitor = cfg.objective
        self.sign = 1 if higher_is_better(self.monitor) else -1
        n = len(runs)
        self.epoch = self.step = 0
        self.best = np.full(n, -math.inf * self.sign)
        self.stale = np.zeros(n, dtype=int)
        self.active = np.ones(n, dtype=bool)
        self.ended = np.full(n, -1)  # the last epoch a diverged job finished
        self.prefix: list[list[dict[str, Any]]] = [[] for _ in runs]  # resumed history
        self.epochs: list[tuple[int, float, int, dict[str, list[float]]]] = []  # this process's
        self.logged = 0  # epochs of self.epochs already in the event files
        self.rows: dict[int, tuple[int, list]] = {}  # each job's history, as last built
        self.best_state: dict[str, Any] | None = None
        self.best_at = np.full(n, -1)  # index into the history where each job's best is
        self.best_written = np.zeros(n, dtype=bool)
        self.yaml = [yaml_text(OmegaConf.to_container(r.cfg, resolve=True)) for r in runs]
        self.hparams = [
            hparams_of(r.cfg, r.dir, hc) for r, hc in zip(runs, hydra_cfgs, strict=True)
        ]
        # A resumed job's events after its checkpoint are dropped (purge_step), as in train().
        self.writers = [
            EventWriter(str(r.dir), purge_step=r.resume["loop"]["step"] + 1 if r.resume else None)
            for r in runs
        ]
        self.signal: int | None = None
        resumed = [r.resume for r in runs if r.resume is not None]
        if resumed:
            self._restore()

    # ------------------------------------------------------------------ the maths
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All jobs' models on their own inputs: x is (jobs, batch, features...)."""
        for name, layer in self.layers:
            if isinstance(layer, nn.Flatten):
                x = x.flatten(2)
            elif isinstance(layer, nn.Linear):
                w, b = self.params[f"{name}.weight"], self.params[f"{name}.bias"]
                x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
            else:  # the activations act element-wise
                x = layer(x)
        return x

    def train_epoch(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x, y = self.splits["train"]
        n, batch = x.shape[1], int(self.cfg.data.batch_size)
        steps = math.ceil(n / batch)
        steps = min(steps, self.t.max_steps_per_epoch or steps)
        if steps > 1:  # each job's own order (one full batch: the order changes nothing)
            order = torch.stack(
                [
                    torch.randperm(n, generator=epoch_generator(r.cfg.seed, self.epoch + 1))
                    for r in self.runs
                ]
            ).to(self.device)
        sums: dict[str, torch.Tensor] = {}
        bad = torch.zeros(len(self.runs), dtype=torch.bool, device=self.device)
        for i in range(steps):
            if steps == 1:
                xb, yb = x, y
            else:
                idx = order[:, i * batch : (i + 1) * batch]
                xb = x.gather(
                    1, idx.view(*idx.shape, *[1] * (x.dim() - 2)).expand(-1, -1, *x.shape[2:])
                )
                yb = y.gather(
                    1, idx.view(*idx.shape, *[1] * (y.dim() - 2)).expand(-1, -1, *y.shape[2:])
                )
            with autocast(self.dtype, self.device):
                out = self.forward(xb)
                loss, batch_sums = self.task.job_scores(out, yb, xb)
                total = loss
                if self.l1.any():  # l1 x the mean absolute weight, as Trainer adds it
                    reg = sum(self.params[w].abs().flatten(1).sum(1) for w in self.weights)
                    total = loss + self.l1 * reg / self.n_weights
            total.sum().backward()
            self.optimizer.step()
            for p in self.params.values():
                p.grad = None
            with torch.no_grad():
                for k, v in batch_sums.items():
                    sums[k] = sums[k] + v.detach() if k in sums else v.detach()
                bad |= ~torch.isfinite(loss.detach())
            self.step += 1
        return sums, bad

    @torch.no_grad()
    def evaluate(self, split: str, keep: bool = False):
        x, y = self.splits[split]
        chunk = int(self.cfg.data.eval_batch_size)
        sums: dict[str, torch.Tensor] = {}
        outputs = []
        for i in range(0, x.shape[1], chunk):
            xb, yb = x[:, i : i + chunk], y[:, i : i + chunk]
            with autocast(self.dtype, self.device):
                out = self.forward(xb)
                _, batch_sums = self.task.job_scores(out, yb, xb)
            for k, v in batch_sums.items():
                sums[k] = sums[k] + v if k in sums else v
            if keep:
                outputs.append(out.float())
        values = self.task.summarize(sums, x.shape[1]) if x.shape[1] else {}
        return values, torch.cat(outputs, 1) if keep else None

    # ------------------------------------------------------------------ the loop
    def fit(self) -> list[dict[str, Any]]:
        t = self.t
        start = time.perf_counter()
        n_train = self.splits["train"][0].shape[1]
        lrs = [float(g["lr"]) for g in self.optimizer.groups]
        for j, run in enumerate(self.runs):
            self._log(
                j,
                f"{type(self.models[j]).__name__} trained in a stacked group of "
                f"{len(self.runs)} jobs (hydra/launcher=batched) on {self.datas[j].meta.name}: "
                f"{n_train} train / {len(self.datas[j].val)} val / {len(self.datas[j].test)} "
                f"test samples, device {self.device}",
            )
            run.started = True
        if t.eval_before and self.epoch == 0:
            before = {}
            for split in ("val", "test"):
                values, _ = self.evaluate(split)
                before.update({f"{split}/{k}": v for k, v in values.items()})
            self.epochs.append((0, 0.0, 0, time.time(), before))
        saved_at = time.monotonic()
        with stop_signals(self):
            while self.epoch < t.epochs:
                tic = time.perf_counter()
                sums, bad = self.train_epoch()
                seconds = time.perf_counter() - tic
                train = self.task.summarize(sums, n_train)
                metrics = {f"train/{k}": v for k, v in train.items()}
                values, _ = self.evaluate("val")
                metrics.update({f"val/{k}": v for k, v in values.items()})
                if t.test_every_epoch:
                    values, _ = self.evaluate("test")
                    metrics.update({f"test/{k}": v for k, v in values.items()})
                metrics["lr"] = lrs
                self.epoch += 1
                bad = bad.cpu().numpy() & self.active
                for j in np.flatnonzero(bad):
                    self._diverged(j)
                self.epochs.append((self.epoch, seconds, self.step, time.time(), metrics))
                value = np.asarray(metrics[self.monitor], dtype=float)
                improved = (
                    self.sign * (value - self.best) > t.early_stopping.min_delta
                ) & self.active
                self.best = np.where(improved, value, self.best)
                self.stale = np.where(improved, 0, self.stale + 1)
                if t.checkpoint and improved.any():
                    self._keep_best(improved)
                if t.checkpoint and (
                    time.monotonic() - saved_at >= t.checkpoint_interval
                    or self.epoch == t.epochs
                    or self.signal is not None
                ):
                    self._save()
                    saved_at = time.monotonic()
                if self.signal is not None:
                    self._stop_on_signal()
        return self._finish(time.perf_counter() - start)

    def _history(self, j: int, upto: int | None = None) -> list[dict[str, Any]]:
        """Job j's history as train() keeps it (up to epoch record `upto`); the full one is
        built once per epoch count (last.pt and metrics.json both hold it)."""
        upto = len(self.epochs) if upto is None else upto
        cached = self.rows.get(j)
        if cached is not None and cached[0] == upto:
            return cached[1]
        rows = list(self.prefix[j])
        for epoch, seconds, _, _, metrics in self.epochs[:upto]:
            row = {"epoch": epoch}
            if epoch:
                row["train_seconds"] = seconds
            row.update({k: v[j] if isinstance(v, list) else v for k, v in metrics.items()})
            if epoch:
                row["samples_per_s"] = self.splits["train"][0].shape[1] / max(seconds, 1e-9)
            rows.append(row)
        if upto == len(self.epochs):
            self.rows[j] = (upto, rows)
        return rows

    def _flush_events(self) -> None:
        """Each job's epochs since the last flush into its event file."""
        events = [w.file_writer.event_writer for w in self.writers]
        for epoch, _, step, wall, metrics in self.epochs[self.logged :]:
            tags = list(metrics)
            heads = [scalar_head(t) for t in tags]
            with np.errstate(over="ignore"):  # as EventWriter.scalars: float32, inf beyond
                rows = np.array([metrics[t] for t in tags], dtype=np.float64).T.astype(np.float32)
            for j, out in enumerate(events):
                if self.active[j] or epoch <= self.ended[j]:
                    out.add_raw(scalars_event(heads, rows[j].tobytes(), step, wall))
                    if epoch == 1 or (self.prefix[j] and epoch == len(self.prefix[j]) + 1):
                        layout(self.writers[j], metrics)
        for writer in self.writers:
            writer.flush()
        self.logged = len(self.epochs)

    def _state(self, j: int, params, opt_state, loop: LoopState) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "run_id": self.runs[j].id,
            "config": self.yaml[j],
            "meta": asdict(self.datas[j].meta),
            "model": {n: params[n][j].detach().clone() for n in self.names},
            "optimizers": {"optimizer": opt_state},
            "scheduler": None,
            "scaler": torch.amp.GradScaler(self.device.type, enabled=False).state_dict(),
            "loop": asdict(loop),
            "rng": rng_state(),
        }

    def _keep_best(self, improved: np.ndarray) -> None:
        """The improved jobs' current state becomes their best (kept stacked, in memory)."""
        idx = torch.from_numpy(np.flatnonzero(improved)).to(self.device)
        if self.best_state is None:
            self.best_state = {
                "params": {n: p.detach().clone() for n, p in self.params.items()},
                "opt": {
                    n: {k: v.clone() for k, v in s.items()} for n, s in self.optimizer.state.items()
                },
                "step": np.zeros(len(self.runs), dtype=int),
                "opt_steps": np.zeros(len(self.runs), dtype=int),
            }
        else:
            for n, p in self.params.items():
                self.best_state["params"][n][idx] = p.detach()[idx]
            for n, s in self.optimizer.state.items():
                for k, v in s.items():
                    kept = self.best_state["opt"][n]
                    if k not in kept:
                        kept[k] = v.clone()
                    kept[k][idx] = v[idx]
        self.best_state["step"][improved] = self.step
        self.best_state["opt_steps"][improved] = self.optimizer.step_count
        self.best_at[improved] = len(self.epochs)
        self.best_written[improved] = False

    def _save(self) -> None:
        """Every running job's last.pt (and best.pt where a better epoch came since)."""
        self._flush_events()
        with one_sync():
            for j in np.flatnonzero(self.active):
                self._save_job(j)

    def _save_job(self, j: int) -> None:
        folder = self.runs[j].dir / "checkpoints"
        loop = LoopState(self.epoch, 0, self.step, {}, 0, float(self.best[j]), int(self.stale[j]))
        state = self._state(j, self.params, self.optimizer.job_state(j, self.names), loop)
        save_checkpoint(folder / "last.pt", {**state, "history": self._history(j)})
        self._write_best(j)

    def _write_best(self, j: int) -> None:
        if self.best_state is None or self.best_written[j] or self.best_at[j] < 0:
            return
        kept, at = self.best_state, int(self.best_at[j])
        epoch = self.epochs[at - 1][0]
        opt = self.optimizer
        current = opt.state, opt.step_count
        opt.state, opt.step_count = kept["opt"], int(kept["opt_steps"][j])
        try:
            opt_state = opt.job_state(j, self.names)
        finally:
            opt.state, opt.step_count = current
        loop = LoopState(epoch, 0, int(kept["step"][j]), {}, 0, float(self.best[j]), 0)
        state = self._state(j, kept["params"], opt_state, loop)
        path = self.runs[j].dir / "checkpoints" / "best.pt"
        save_checkpoint(path, {**state, "history": self._history(j, at)})
        self.best_written[j] = True

    def _diverged(self, j: int) -> None:
        """Job j's loss became NaN or infinite in this epoch: it stops, the others go on."""
        self.active[j] = False
        self.ended[j] = self.epoch - 1
        if self.t.checkpoint:
            self._write_best(j)
        run = self.runs[j]
        message = (
            f"the training loss became NaN or infinite at epoch {self.epoch}. Try a lower "
            "learning rate (optimizer.lr), gradient clipping (trainer.grad_clip=1.0) or fp32 "
            "(trainer.precision=fp32)."
        )
        write_metrics(
            run.dir,
            {
                "status": "diverged",
                "message": message,
                "epochs": self.epoch - 1,
                "steps": self.step,
            },
        )
        self._log(j, message, logging.WARNING)
        print(f"dlexp: {run.dir.name} diverged: {message}", file=sys.stderr)

    def _stop_on_signal(self) -> None:
        import signal

        name = signal.Signals(self.signal).name
        for j in np.flatnonzero(self.active):
            message = (
                f"stopped by {name} after epoch {self.epoch} (step {self.step}); continue "
                f"with: {self.runs[j].resume_command}"
            )
            write_metrics(
                self.runs[j].dir,
                {
                    "status": "interrupted",
                    "message": message,
                    "epochs": self.epoch,
                    "steps": self.step,
                },
            )
        raise Interrupted(
            self.signal,
            f"stopped by {name} after epoch {self.epoch}; the "
            "sweep continues with the same command and sweep.resume=true",
        )

    def _finish(self, seconds: float) -> list[dict[str, Any] | None]:
        test, outputs = self.evaluate("test", keep=True)
        self._flush_events()
        with one_sync():
            return [self._finish_job(j, test, outputs, seconds) for j in range(len(self.runs))]

    def _finish_job(self, j: int, test, outputs, seconds: float) -> dict[str, Any] | None:
        """Job j's test metrics, final TensorBoard records, metrics.json."""
        run, writer, model = self.runs[j], self.writers[j], self.models[j]
        if not self.active[j]:  # diverged: its metrics.json says so already
            writer.close()
            return None
        history = self._history(j)
        final = {k: v for k, v in history[-1].items() if k not in ("epoch", "train_seconds")}
        job_test = {k: v[j] for k, v in test.items()}
        job_test.update(self.task.test_metrics(outputs[j], self.splits["test"][1][j]))
        final.update({f"test/{k}": v for k, v in job_test.items()})
        final.update(epochs=self.epoch, steps=self.step, monitor=self.monitor, time_s=seconds)
        with torch.no_grad():  # the job's own model, for the task's report
            for n, p in model.named_parameters():
                p.copy_(self.params[n][j])
        if not self.t.test_every_epoch:
            log_scalars(writer, {f"test/{k}": v for k, v in job_test.items()}, self.step)
        model.eval()
        self.task.final_report(
            writer, model, self.datas[j], outputs[j], step=self.step, run_dir=run.dir
        )
        write_hparams(writer, self.hparams[j], final)
        writer.close()
        final["status"] = "completed"
        write_metrics(run.dir, {**final, "history": history})
        shown = "  ".join(
            f"{k} {v:.4f}" for k, v in final.items() if k.startswith("test/") and k.count("/") == 1
        )
        self._log(j, f"final {shown}")
        self._log(j, f"run saved in {run.dir}")
        self.rows.pop(j, None)
        return final

    def _restore(self) -> None:
        """Continue jobs from their checkpoints (all of a group stopped at the same epoch)."""
        for j, run in enumerate(self.runs):
            state = run.resume
            with torch.no_grad():
                for n in self.names:
                    self.params[n][j] = state["model"][n].to(self.device)
            self.optimizer.load_job_state(j, self.names, state["optimizers"]["optimizer"])
            loop = state["loop"]
            self.epoch, self.step = loop["epoch"], loop["step"]
            self.best[j], self.stale[j] = loop["best"], loop["stale"]
            self.prefix[j] = list(state["history"])
        log.info(f"resuming {len(self.runs)} stacked jobs at epoch {self.epoch + 1}")

    def _log(self, j: int, message: str, level: int = logging.INFO) -> None:
        """A line in job j's train.log (and, for the first job, on the console)."""
        if j == 0:
            log.log(level, message)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.runs[j].dir / "train.log", "a") as f:
            f.write(f"[{stamp}][{logging.getLevelName(level)}] {message}\n")
