"""What dlexp keeps of every job, whatever launched it: the per-job records of a group.

A single run is a group of one; the batched launcher's groups hold many jobs. `Records` keeps,
for each job of a group, the monitored metric (best so far, epochs without improvement, early
stopping), its status (training, stopped early, diverged, interrupted), its TensorBoard events
(every epoch's scalars: the job's history, stored once, in the file TensorBoard reads), its
checkpoints (last.pt, best.pt), its train.log and, at the end, metrics.json (final metrics and
status; the summary row of `dlexp report`) and the HParams record. The values that change every
epoch are columns over the jobs, so a group of 2,000 jobs costs microseconds an epoch.

The engine (dlexp.trainer) calls it; the step (dlexp.steps) holds the tensors it saves.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dlexp.checkpoint import FORMAT, LoopState, save_checkpoint, save_json, yaml_text
from dlexp.errors import DlexpError
from dlexp.events import EventWriter, scalars_events
from dlexp.tasks.base import higher_is_better

log = logging.getLogger("dlexp")

# train.log's lines (the FileHandler of a single run, and each grouped job's own lines).
LOG_FORMAT = "[%(asctime)s][%(levelname)s] %(message)s"
_FORMATTER = logging.Formatter(LOG_FORMAT)


@dataclass
class Job:
    """One job of a group: its run folder and identity, and what it records."""

    dir: Path
    id: str
    config: DictConfig
    meta: Any  # DataMeta
    hparams: dict[str, Any]
    resume: dict[str, Any] | None = None  # the checkpoint it continues
    resume_command: str = ""


class Records:
    """The per-job record of every job of a group (see the module's docstring).

    `main`: this process writes (rank 0 of a distributed run). `own_log`: each job appends
    its lines to its train.log itself (a group); otherwise the run's log handler does (a
    single run). The first job's lines also go to the console.
    """

    def __init__(
        self,
        jobs: list[Job],
        monitor: str,
        trainer: Any,  # dlexp.trainer.TrainerSettings
        main: bool = True,
        own_log: bool = False,
    ) -> None:
        self.jobs, self.monitor, self.cfg = jobs, monitor, trainer
        self.main, self.own_log = main, own_log
        self.sign = 1 if higher_is_better(monitor) else -1
        n = len(jobs)
        self.best = np.full(n, -np.inf * self.sign)
        self.stale = np.zeros(n, dtype=int)
        self.best_epoch = np.zeros(n, dtype=int)
        self.status: list[str | None] = [None] * n  # None: training
        self.active = np.ones(n, dtype=bool)  # (status is None)
        self.message: list[str] = [""] * n
        self.ended: list[tuple[int, int] | None] = [None] * n  # (epoch, step) where it ended
        self.last: list[dict[str, float] | None] = [None] * n  # its last epoch's metrics
        self.epoch_metrics: dict[str, list[float]] = {}  # the group's last epoch
        self.yaml = [_yaml(job.config) for job in jobs]
        self.writers = [
            EventWriter(
                str(job.dir), purge_step=job.resume["loop"]["step"] + 1 if job.resume else None
            )
            if main
            else _NullWriter()
            for job in jobs
        ]
        self._laid_out = False
        for j, job in enumerate(jobs):
            if job.resume is not None:
                self.best[j], self.stale[j] = (
                    job.resume["loop"]["best"],
                    job.resume["loop"]["stale"],
                )

    def __len__(self) -> int:
        return len(self.jobs)

    # ------------------------------------------------------------------ the log
    def log(self, j: int, message: str, level: int = logging.INFO) -> None:
        """A line in job j's train.log (and on the console for the first job)."""
        if j == 0:
            log.log(level, message)
        if self.own_log and self.main:
            line = logging.LogRecord("dlexp", level, "", 0, message, None, None)
            with open(self.jobs[j].dir / "train.log", "a") as f:
                f.write(_FORMATTER.format(line) + "\n")

    # --------------------------------------------------------------- each epoch
    def scalars(self, values: dict[str, list[float]], step: int, jobs: np.ndarray | None = None):
        """Scalars with one value per job into each (active, or given) job's event file, one
        event each. A group encodes the values once for all its jobs (scalars_events); one job
        packs them directly (EventWriter.scalars): the same bytes (tests/test_events.py)."""
        if not self.main or not values:
            return
        if len(self) == 1:
            if jobs is None or jobs[0]:
                self.writers[0].scalars({k: v[0] for k, v in values.items()}, step)
            return
        with np.errstate(over="ignore"):  # float32, as TensorBoard stores them (inf beyond)
            rows = np.array(list(values.values()), dtype=np.float64).T.astype(np.float32)
        events = scalars_events(list(values), rows, step, time.time())
        for j in np.flatnonzero(self.active if jobs is None else jobs):
            self.writers[j].raw(events[j])

    def job_scalars(self, j: int, values: dict[str, float], step: int) -> None:
        """Scalars of job j alone, as one event."""
        if self.main and values:
            self.writers[j].scalars(values, step)

    def epoch(
        self, epoch: int, step: int, metrics: dict[str, list[float]], seconds: float, seen: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The group's epoch (`seconds` of training on `seen` samples a job): its scalars into
        the events (the history, with `epoch` and `time/train_seconds`), the monitor's best and
        the epochs since. Returns (improved, to stop early), one bool per job."""
        if self.monitor not in metrics:
            known = ", ".join(k for k in metrics if k.startswith(("train/", "val/")))
            raise DlexpError(
                f"objective={self.monitor!r} is not a metric of this run; its metrics are {known}."
            )
        active, n = self.active, len(self)
        if epoch % self.cfg.log_every_epochs == 0 or epoch == self.cfg.epochs:
            self.scalars(
                {"epoch": [epoch] * n, **metrics, "time/train_seconds": [seconds] * n}, step
            )
            if not self._laid_out:
                for j in np.flatnonzero(active):
                    layout(self.writers[j], metrics)
                self._laid_out = True
        self.epoch_metrics = {**metrics, "samples_per_s": [seen / max(seconds, 1e-9)] * n}
        value = np.asarray(metrics[self.monitor], dtype=float)
        improved = (self.sign * (value - self.best) > self.cfg.early_stopping.min_delta) & active
        self.best = np.where(improved, value, self.best)
        self.best_epoch = np.where(improved, epoch, self.best_epoch)
        self.stale = np.where(improved, 0, self.stale + 1)
        patience = self.cfg.early_stopping.patience
        stop = (self.stale >= patience) & active if patience else np.zeros(len(self), bool)
        return improved, stop

    def job_metrics(self, j: int) -> dict[str, float]:
        """Job j's metrics of its last epoch."""
        if self.last[j] is not None:
            return self.last[j]
        return {k: v[j] for k, v in self.epoch_metrics.items()}

    def end(self, j: int, status: str, epoch: int, step: int, message: str = "") -> None:
        """Job j stops training (stopped early, diverged or interrupted) at this epoch."""
        if self.epoch_metrics:
            self.last[j] = self.job_metrics(j)
        else:  # (no epoch in this process: its checkpoint's, from its events)
            rows = [r for r in read_history(self.jobs[j].dir) if r["step"] <= step]
            keep = ("train/", "val/", "lr")
            self.last[j] = {k: v for k, v in (rows or [{}])[-1].items() if k.startswith(keep)}
        self.status[j], self.message[j], self.ended[j] = status, message, (epoch, step)
        self.active[j] = False
        if status in ("diverged", "interrupted") and self.main:
            save_json(
                self.jobs[j].dir / "metrics.json",
                {"status": status, "message": message, "epochs": epoch, "steps": step},
            )
        if message:
            self.log(j, message, logging.WARNING if status == "diverged" else logging.INFO)
        if status == "diverged" and self.own_log:  # (a group goes on: say which job stopped)
            print(f"dlexp: {self.jobs[j].dir.name} diverged: {message}", file=sys.stderr)

    # -------------------------------------------------------------- checkpoints
    def checkpoint(self, j: int, name: str, state: dict[str, Any], loop: LoopState) -> None:
        """checkpoints/<name> of job j: the step's state (weights, optimizers, ...) and the loop."""
        if not self.main:
            return
        job = self.jobs[j]
        folder = job.dir / "checkpoints"
        self.writers[j].flush()  # the curves up to this checkpoint survive a SIGKILL with it
        full = {
            "format": FORMAT,
            "run_id": job.id,
            "config": self.yaml[j],
            "meta": asdict(job.meta),
            **state,
            "loop": asdict(loop),
        }
        try:
            save_checkpoint(folder / name, full)
        except (OSError, RuntimeError) as err:  # torch.save on a full disk: RuntimeError
            reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
            if "unexpected pos" in reason or "write" in reason.lower():
                reason = f"the disk is probably full: {reason}"
            raise DlexpError(
                f"could not write a checkpoint in {folder} ({reason}). The previous "
                "checkpoint there is intact. Free some space (or fix the folder's permissions) "
                f"and continue with: {job.resume_command}"
            ) from err

    def loop_of(self, j: int, loop: LoopState, sums: dict[str, torch.Tensor]) -> LoopState:
        """Job j's view of where the group's loop stands."""
        return LoopState(
            loop.epoch,
            loop.batch,
            loop.step,
            sums,
            loop.seen,
            float(self.best[j]),
            int(self.stale[j]),
        )

    # --------------------------------------------------------------------- end
    def finish(self, j: int, final: dict[str, Any]) -> dict[str, Any]:
        """Job j's final metrics: the HParams record, the events closed, metrics.json."""
        final = {**final, "status": "completed", "monitor": self.monitor}
        if self.main:
            write_hparams(self.writers[j], self.jobs[j].hparams, final)
            save_json(self.jobs[j].dir / "metrics.json", final)
        self.close(j)
        return final

    def close(self, j: int | None = None) -> None:
        for writer in self.writers if j is None else [self.writers[j]]:
            writer.close()


class _NullWriter:
    """What ranks other than 0 get instead of an EventWriter: every call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None

    @property
    def file_writer(self) -> _NullWriter:
        return self


def _yaml(cfg: DictConfig) -> str:
    return yaml_text(OmegaConf.to_container(cfg, resolve=True))


def layout(writer, metrics: dict[str, Any]) -> None:
    """TensorBoard's Custom Scalars tab: train against validation (and test) per metric, on
    one chart each, as the course plots them."""
    charts = {}
    for key in metrics:
        name = key.partition("/")[2]
        if key.startswith("train/") and f"val/{name}" in metrics:
            tags = [f"{split}/{name}" for split in ("train", "val", "test")]
            # TensorBoard reads these as regular expressions: anchored, so that train/loss does
            # not also collect train/loss_step
            charts[name] = ["Multiline", [f"^{re.escape(t)}$" for t in tags if t in metrics]]
    if charts:
        writer.add_custom_scalars({"train vs validation": charts})


def write_hparams(writer, hparams: dict[str, Any], final: dict[str, Any]) -> None:
    """HParams records in the run's own event file (add_hparams would make a sub-run)."""
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    metrics = {k: v for k, v in final.items() if k.startswith(("test/", "val/", "train/"))}
    # Only the session records: a record of the columns (`write_experiment`) is the sweep's,
    # one per logdir; one in each run would say that nothing differs.
    _, session_start, session_end = hparams_summary(hparams, metrics)
    for summary in (session_start, session_end):
        writer.file_writer.add_summary(summary)


def write_experiment(sweep: Path, rows: list[dict[str, Any]]) -> None:
    """The sweep's HParams experiment record, in an event file of the sweep folder's own: its
    columns are the jobs' hyperparameters (the swept ones marked as differing, so they come
    first) and their metrics led by the objective, instead of what TensorBoard infers without
    one (every scalar tag in alphabetical order, the objective among them). TensorBoard reads
    one such record per logdir: pointed at a folder of several sweeps it uses one sweep's.

    `rows` are dlexp.report.collect's (each job's folder, overrides and final metrics). Jobs
    differ only by their overrides: the first finished job's config gives every column and
    its type, the others' overrides their values (a 1,000-job sweep reads one config)."""
    import yaml
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    done = [r for r in rows if r["status"] != "running" and (r["folder"] / ".hydra").is_dir()]
    if not done:
        return
    first = done[0]["folder"]
    base = hparams_of(OmegaConf.load(first / ".hydra" / "config.yaml"), first)

    def typed(key: str, text: str) -> Any:  # as the config types it (yaml reads 1e-3 as text)
        kind = type(base.get(key, ""))
        try:
            return kind(text) if kind in (int, float) else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError):
            return text

    values: dict[str, list[Any]] = {k: [] for k in base}
    for row in done:
        job = {**base, **{k: typed(k, v) for k, v in row["overrides"].items() if k in base}}
        for key, value in job.items():
            values[key].append(value)
    order = {"val": 0, "test": 1, "train": 2}
    scores = dict.fromkeys(k for r in done for k in r if k.startswith(("val/", "test/", "train/")))
    monitor = done[0].get("monitor")
    metrics = sorted(scores, key=lambda k: (k != monitor, order[k.split("/")[0]]))
    if not values:
        return
    kinds = {str: api_pb2.DATA_TYPE_STRING, bool: api_pb2.DATA_TYPE_BOOL}
    infos = [
        api_pb2.HParamInfo(
            name=key,
            type=kinds.get(type(seen[0]), api_pb2.DATA_TYPE_FLOAT64),
            differs=len({repr(v) for v in seen}) > 1,
        )
        for key, seen in values.items()
    ]
    experiment = api_pb2.Experiment(
        hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m)) for m in metrics],
    )
    content = HParamsPluginData(experiment=experiment, version=metadata.PLUGIN_DATA_VERSION)
    summary = Summary(
        value=[
            Summary.Value(
                tag=metadata.EXPERIMENT_TAG,
                metadata=metadata.create_summary_metadata(content),
            )
        ]
    )
    for old in sweep.glob("events.out.tfevents.*"):
        old.unlink()  # a resumed sweep's record replaces the first one
    with EventWriter(str(sweep)) as writer:
        writer.file_writer.add_summary(summary)


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
        choices = {
            k: str(v)
            for k, v in hc.runtime.choices.items()
            if v is not None and not k.startswith("hydra")
        }
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
    # None (no experiment file, no loss given) is left out rather than shown as "None"
    return {
        k: v if isinstance(v, int | float | str | bool) else str(v)
        for k, v in out.items()
        if v is not None
    }


def read_history(run_dir: str | Path) -> list[dict[str, float]]:
    """A run's history, one row per recorded epoch, as TensorBoard reads its event files
    (TensorBoard's own EventAccumulator: a resumed run's later files replace what came after
    its checkpoint): the epoch's `epoch`, `step`, train/, val/ (and test/) metrics, `lr` and
    timings; the last row also holds the final test/ metrics."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    if "epoch" not in tags:
        return []
    rows = {e.step: {"epoch": int(e.value), "step": e.step} for e in acc.Scalars("epoch")}
    for tag in tags:
        if tag != "epoch" and not tag.endswith("_step"):
            for e in acc.Scalars(tag):
                if e.step in rows:
                    rows[e.step][tag] = e.value
    return [rows[step] for step in sorted(rows)]
