"""The one training loop: every run and every group of sweep jobs trains through it.

A single run is a group of one; the batched launcher's groups hold many jobs that share an
architecture. The loop owns the epochs, the batches, evaluation, signals, the divergence guard,
early stopping, the checkpoint cadence and progress. What a step computes belongs to the step
(dlexp.steps.ModuleStep: autograd on one module; dlexp.stacked.StackedStep: a group's stacked
models), what a step *means* (loss, metrics, pictures) to the task, and what is kept of each
job (history, best state, checkpoints, metrics.json, TensorBoard) to the records
(dlexp.record). Every value the loop handles has one entry per job.

A checkpoint holds everything needed to continue exactly where it stopped, even in the middle
of an epoch: the step's state (weights, optimizers, scheduler, grad scaler, RNG), the epoch and
the batch within it (the data order is a function of seed and epoch) and the epoch's running
metric sums.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dlexp.checkpoint import LoopState, one_sync
from dlexp.diagnostics import WeightLog
from dlexp.distributed import Dist
from dlexp.errors import DlexpError
from dlexp.progress import Progress
from dlexp.record import Records
from dlexp.settings import Count, NonNegative, OneOf, Range
from dlexp.steps import mean_abs_weight
from dlexp.tasks.base import Task

log = logging.getLogger("dlexp")


@dataclass
class EarlyStopping:
    patience: Annotated[int, Range(1, says="a whole number of epochs >= 1")] | None
    min_delta: NonNegative


@dataclass
class TrainerSettings:
    """The `trainer` config as the loop reads it: each key's type and range stated here once
    (dlexp.checks refuses a value that does not fit); the values and what they mean are in
    configs/trainer/default.yaml."""

    required: ClassVar[bool] = True  # the loop reads every key
    epochs: Count
    precision: Annotated[str, OneOf("auto", "fast", "fp32", "bf16", "fp16")]
    channels_last: bool
    compile: bool
    devices: Annotated[int, Range(1, says="a whole number >= 1 (processes)")]
    grad_clip: (
        Annotated[
            float, Range(0, open_low=True, says="a positive number (the largest gradient norm)")
        ]
        | None
    )
    l1: Annotated[float, Range(0, says="a number >= 0 (0 turns the L1 penalty off)")]
    early_stopping: EarlyStopping
    deterministic: bool
    progress: Annotated[str, OneOf("auto", "bar", "log", "none")]
    log_every_steps: Count
    log_every_epochs: Count
    max_steps_per_epoch: Count | None
    eval_before: bool
    log_weights: bool
    weight_stats: bool
    report_every_epochs: Annotated[int, Range(1, says="a whole number of epochs >= 1")] | None
    test_every_epoch: bool
    checkpoint: bool
    checkpoint_interval: Annotated[
        float, Range(0, says="a number of seconds >= 0 (0: every epoch)")
    ]
    checkpoint_every_steps: Count | None
    checkpoint_every_minutes: (
        Annotated[float, Range(0, open_low=True, says="a positive number of minutes")] | None
    )
    overwrite: bool
    resume: str | None

    @classmethod
    def of(cls, cfg: DictConfig) -> TrainerSettings:
        values = OmegaConf.to_container(cfg, resolve=True)
        return cls(**{**values, "early_stopping": EarlyStopping(**values["early_stopping"])})


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class Diverged(DlexpError):
    """The loss became NaN or infinite."""


@contextlib.contextmanager
def stop_signals(owner):
    """SIGINT/SIGTERM/SIGUSR1 set `owner.signal`: the loop finishes its step, checkpoints and
    stops. A second Ctrl-C stops at once."""

    def handler(signum, frame):
        if owner.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        owner.signal = signum
        again = " (Ctrl-C again to quit now)" if signum == signal.SIGINT else ""
        log.warning(f"{signal.Signals(signum).name}: stopping after this step{again}")

    try:
        # SIGUSR1: the warning SLURM (and submitit) send before preempting a job.
        wanted = [
            signal.SIGINT,
            signal.SIGTERM,
            *([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else []),
        ]
        previous = {s: signal.signal(s, handler) for s in wanted}
    except ValueError:  # not the main thread: leave signals alone
        previous = {}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Trainer:
    """Trains a group (`step`: its jobs' steps; `records`: what is kept of each job)."""

    def __init__(
        self,
        cfg: TrainerSettings,
        step: Any,  # dlexp.steps.ModuleStep or dlexp.stacked.StackedStep
        records: Records,
        task: Task,
        dist: Dist | None = None,
    ) -> None:
        self.cfg, self.step, self.records, self.task = cfg, step, records, task
        self.dist = dist or Dist()
        self.signal: int | None = None
        self.loop = LoopState()
        self.best_pending = np.zeros(len(records), dtype=bool)
        self.best_step = np.zeros(len(records), dtype=int)
        self._saved_at = time.monotonic()
        resumed = [job.resume for job in records.jobs]
        self.fresh = all(r is None for r in resumed)
        if not self.fresh:  # (a group resumes together: every job stopped at the same step)
            loop = resumed[0]["loop"]
            sums = [r["loop"]["sums"] for r in resumed]
            self.loop = LoopState(loop["epoch"], loop["batch"], loop["step"], seen=loop["seen"])
            device = step.device
            self.loop.sums = {k: torch.stack([s[k] for s in sums]).to(device) for k in sums[0]}
            patience = cfg.early_stopping.patience
            for j, state in enumerate(resumed):
                step.load(j, state)
                self.best_step[j] = state["loop"]["step"]
                if patience and records.stale[j] >= patience:  # it had stopped early
                    message = f"early stopping ended this run at epoch {loop['epoch']}"
                    records.end(j, "stopped", loop["epoch"], loop["step"], message)
                    step.freeze(j)

    # ------------------------------------------------------------------ the loop
    def fit(self, batch_size: int, eval_batch_size: int) -> list[dict[str, Any] | None]:
        """Train every job; each job's final metrics (None for a job that diverged)."""
        cfg, loop, step, records, task = self.cfg, self.loop, self.step, self.records, self.task
        steps = step.steps_per_epoch(batch_size)
        if not self.fresh:
            where = f"epoch {loop.epoch + 1} of {cfg.epochs}, batch {loop.batch} (step {loop.step})"
            records.log(
                0,
                f"resuming {len(records)} stacked jobs at {where}"
                if step.n > 1
                else f"resuming at {where}",
            )
        step.begin(self.fresh)
        start = time.perf_counter()
        if cfg.eval_before and self.fresh:  # the starting point, e.g. before fine-tuning
            before = {
                **self._scores("val", eval_batch_size),
                **self._scores("test", eval_batch_size),
            }
            records.scalars({"epoch": [0] * step.n, **before}, loop.step)
            shown = "  ".join(f"{k} {v[0]:.4f}" for k, v in before.items())
            records.log(0, f"before training: {shown}")
        report_every = cfg.report_every_epochs or max(1, cfg.epochs // 50)
        weight_log = WeightLog() if cfg.log_weights and self.dist.main else None
        extra = task.extra_metrics is not None  # (a GAN's sample quality)
        shown = cfg.progress if self.dist.main else "none"
        with stop_signals(self), Progress(shown, cfg.epochs, steps) as progress:
            while loop.epoch < cfg.epochs and records.active.any():
                epoch = loop.epoch + 1
                progress.start_epoch(epoch, done=loop.batch)
                tic = time.perf_counter()
                self._train_epoch(batch_size, steps, progress)
                seconds = time.perf_counter() - tic
                if not records.active.any():  # every job diverged
                    break
                sums, seen = self.dist.sum(loop.sums, loop.seen)
                metrics = self._named("train", sums, seen)
                metrics.update(self._scores("val", eval_batch_size))
                if extra:
                    self._extra(metrics)
                if cfg.test_every_epoch:  # for learning curves and time-to-accuracy
                    metrics.update(self._scores("test", eval_batch_size))
                metrics["lr"] = step.lr()
                improved, stopping = records.epoch(epoch, loop.step, metrics, seconds, seen)
                due = epoch % report_every == 0 or epoch == cfg.epochs
                if task.epoch_report is not None and due:
                    self._report(
                        lambda j, model, data: task.epoch_report(
                            records.writers[j], model, data, step=loop.step
                        ),
                        np.flatnonzero(records.active),
                    )
                if weight_log is not None:
                    weight_log.log(records.writers[0], step.model, step.datas[0], loop.step)
                step.end_epoch()
                progress.end_epoch(epoch, {k: v[0] for k, v in metrics.items()}, seconds)
                loop.epoch, loop.batch, loop.sums, loop.seen = epoch, 0, {}, 0
                if cfg.checkpoint and improved.any():  # kept in memory, written with last.pt
                    step.keep_best(improved)
                    self.best_pending |= improved
                    self.best_step[improved] = loop.step
                for j in np.flatnonzero(stopping):
                    message = (
                        f"early stopping: no better {records.monitor} for "
                        f"{cfg.early_stopping.patience} epoch(s)"
                    )
                    records.end(j, "stopped", epoch, loop.step, message)
                    step.freeze(j)
                waited = time.monotonic() - self._saved_at >= cfg.checkpoint_interval
                if cfg.checkpoint and (waited or stopping.any() or epoch == cfg.epochs):
                    self._save(records.active | stopping)
        step.thaw()
        return self._finish(eval_batch_size, time.perf_counter() - start)

    def _train_epoch(self, batch_size: int, steps: int, progress: Progress) -> None:
        """The rest of the current epoch; metric sums stay on the device."""
        cfg, loop, step = self.cfg, self.loop, self.step
        log_every = int(cfg.log_every_steps)
        every_steps = cfg.checkpoint_every_steps or 0
        every_s = 60.0 * (cfg.checkpoint_every_minutes or 0)
        last_save = time.monotonic()
        unchecked: list[torch.Tensor] = []  # losses not yet checked for NaN (no sync per step)
        step.start_epoch(loop.epoch + 1)
        for x, y in step.batches(loop.epoch + 1, loop.batch, batch_size):
            if loop.batch >= steps:
                break
            loss, sums = step.train(x, y)
            for k, v in sums.items():
                loop.sums[k] = loop.sums[k] + v if k in loop.sums else v
            unchecked.append(loss)
            count = y.shape[step.batch_dim]
            loop.seen += count
            loop.batch += 1
            loop.step += 1
            progress.advance(loss)
            due = (every_steps and loop.step % every_steps == 0) or (
                every_s and time.monotonic() - last_save >= every_s
            )
            if loop.step % log_every == 0 or due or self.signal is not None:
                self._check_finite(unchecked)
                if loop.step % log_every == 0:  # this step's metrics (the only syncs mid-epoch)
                    values = {f"train/{k}_step": _per_job(v, count) for k, v in sums.items()}
                    self.records.scalars(values, loop.step)
            if (due or self.signal is not None) and cfg.checkpoint:
                self._save(self.records.active)
                last_save = time.monotonic()
            if self.signal is not None:
                self._stop_on_signal()
        self._check_finite(unchecked)

    # ------------------------------------------------------------------ scores
    def _named(self, split: str, sums: dict[str, torch.Tensor], count: int) -> dict[str, list]:
        """An epoch's metrics from its sums, one value per job, named `split/metric`: one host
        sync per split."""
        if not sums:
            return {}
        values = self.task.summarize({k: v.reshape(-1) for k, v in sums.items()}, count)
        return {f"{split}/{k}": v for k, v in values.items()}

    def _scores(self, split: str, batch_size: int) -> dict[str, list]:
        sums, _ = self.step.evaluate(split, batch_size)
        return self._named(split, sums or {}, len(getattr(self.step.datas[0], split)))

    @torch.inference_mode()
    def _extra(self, metrics: dict[str, list]) -> None:
        """Validation metrics that are not sums over batches (a GAN's sample quality)."""
        rows = [
            self.task.extra_metrics(self.step.module(j), self.step.datas[j])
            for j in range(self.step.n)
        ]
        for key in rows[0]:
            metrics[f"val/{key}"] = [row[key] for row in rows]

    @torch.inference_mode()
    def _report(self, report, jobs) -> None:
        """A task's TensorBoard extras for the given jobs, in eval mode."""
        if not self.dist.main:
            return
        for j in jobs:
            report(j, self.step.module(j), self.step.datas[j])

    # ------------------------------------------------------- faults and checkpoints
    def _check_finite(self, losses: list[torch.Tensor]) -> None:
        """`losses`: the last steps' (up to loop.step), one per job each, emptied once checked;
        a job whose loss is NaN or infinite stops (its group goes on)."""
        if not losses:
            return
        values = torch.stack(losses).reshape(len(losses), -1)
        finite = torch.isfinite(values)
        steps = len(losses)
        losses.clear()
        if bool(finite.all()):
            return
        records = self.records
        for j in np.flatnonzero(~finite.all(0).cpu().numpy() & records.active):
            bad = int(torch.nonzero(~finite[:, j])[0])
            step, epoch = self.loop.step - steps + 1 + bad, self.loop.epoch + 1
            self._write_best(j)  # the best state so far is still good: keep it
            folder = records.jobs[j].dir / "checkpoints"
            kept = [p for p in (folder / "last.pt", folder / "best.pt") if p.is_file()]
            kept = f"The good checkpoints ({', '.join(map(str, kept))}) are kept. " if kept else ""
            message = (
                f"the training loss became NaN or infinite at epoch {epoch}, step {step}. {kept}"
                "Try a lower learning rate (optimizer.lr), gradient clipping "
                "(trainer.grad_clip=1.0) or fp32 (trainer.precision=fp32)."
            )
            records.end(j, "diverged", self.loop.epoch, self.loop.step, message)

    def _save(self, jobs: np.ndarray) -> None:
        """last.pt of the given jobs (where the loop stands), and best.pt where a better epoch
        came since (a group's files reach the disk with one sync)."""
        self._saved_at = time.monotonic()
        with one_sync() if self.step.n > 1 else contextlib.nullcontext():
            for j in np.flatnonzero(jobs):
                sums = {k: v.reshape(-1)[j] for k, v in self.loop.sums.items()}
                loop = self.records.loop_of(j, self.loop, sums)
                self.records.checkpoint(j, "last.pt", self.step.state(j), loop)
                self._write_best(j)

    def _write_best(self, j: int) -> None:
        if not self.best_pending[j]:
            return
        records = self.records
        epoch, best = int(records.best_epoch[j]), float(records.best[j])
        loop = LoopState(epoch, 0, int(self.best_step[j]), {}, 0, best, 0)
        records.checkpoint(j, "best.pt", self.step.best_state(j), loop)
        self.best_pending[j] = False

    def _stop_on_signal(self) -> None:
        name = signal.Signals(self.signal).name
        loop, records = self.loop, self.records
        saved = "a checkpoint was written; " if self.cfg.checkpoint else ""
        for j in np.flatnonzero(records.active):
            records.end(
                j,
                "interrupted",
                loop.epoch,
                loop.step,
                f"stopped by {name} in epoch {loop.epoch + 1}, after step {loop.step}; {saved}"
                f"continue with: {records.jobs[j].resume_command}",
            )
        message = records.message[0]
        if self.step.n > 1:
            message = (
                f"stopped by {name} in epoch {loop.epoch + 1}; the sweep continues with the "
                "same command and sweep.resume=true"
            )
        raise Interrupted(self.signal, message)

    # ------------------------------------------------------------------ the end
    def _finish(self, eval_batch_size: int, seconds: float) -> list[dict[str, Any] | None]:
        """The test split's scores and each job's final records."""
        records, step, task = self.records, self.step, self.task
        if all(s in ("diverged", "interrupted") for s in records.status):
            records.close()  # (nothing to score: no job finished)
            return [None] * step.n
        sums, outputs = step.evaluate("test", eval_batch_size, keep=True)
        test = self._named("test", sums or {}, len(step.datas[0].test))
        finals: list[dict[str, Any] | None] = []
        with one_sync() if step.n > 1 else contextlib.nullcontext():
            for j in range(step.n):
                if records.status[j] in ("diverged", "interrupted"):
                    records.close(j)
                    finals.append(None)
                    continue
                epochs, steps = records.ended[j] or (self.loop.epoch, self.loop.step)
                job_test = {k: v[j] for k, v in test.items()}
                if outputs is not None:
                    scores = task.test_metrics(outputs[j], step.datas[j].test.y)
                    job_test.update({f"test/{k}": v for k, v in scores.items()})
                if not self.cfg.test_every_epoch:
                    records.job_scalars(j, job_test, steps)
                final = {**records.job_metrics(j), **job_test, "epochs": epochs, "steps": steps}
                final["time_s"] = seconds
                if self.cfg.weight_stats:
                    final["weights/mean_abs"] = mean_abs_weight(step.module(j))
                out = None if outputs is None else outputs[j]
                self._report(
                    lambda j, model, data, out=out, steps=steps: task.final_report(
                        records.writers[j],
                        model,
                        data,
                        out,
                        step=steps,
                        run_dir=records.jobs[j].dir,
                    ),
                    [j],
                )
                finals.append(records.finish(j, final))
                split = "test/" if job_test else "train/"  # (per-class values: metrics.json)
                shown = "  ".join(
                    f"{k} {v:.4f}"
                    for k, v in final.items()
                    if k.startswith(split) and k.count("/") == 1
                )
                records.log(j, f"final {shown}")
                records.log(j, f"run saved in {records.jobs[j].dir}")
        return finals


def _per_job(value: torch.Tensor, count: int) -> list[float]:
    return [v / count for v in value.reshape(-1).tolist()]
