"""The one training loop shared by every task.

It owns the device, precision, epochs, the data order, metrics, TensorBoard, checkpoints,
resuming, signals, the divergence guard and early stopping; what a step *means* (loss,
metrics, extra images) belongs to the task.

A checkpoint holds everything the loop needs to continue exactly where it stopped, even in
the middle of an epoch: weights, optimizer, scheduler and grad-scaler states, the epoch and
the batch within it (the data order is a function of seed and epoch), the epoch's running
metric sums, the RNG states and the history so far.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import signal
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dlexp import closed_form
from dlexp.checkpoint import FORMAT, LoopState, save_checkpoint, save_json
from dlexp.data import Data, Split
from dlexp.diagnostics import WeightLog
from dlexp.distributed import Dist
from dlexp.errors import DlexpError
from dlexp.progress import Progress
from dlexp.tasks.base import Task, higher_is_better

log = logging.getLogger("dlexp")


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class Diverged(DlexpError):
    """The loss became NaN or infinite."""


def namespace(node: Any) -> Any:
    if isinstance(node, dict):
        return SimpleNamespace(**{k: namespace(v) for k, v in node.items()})
    return node


_MODAL = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def _mode(model: nn.Module, training: bool) -> None:
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


def pick_device(kind: str) -> torch.device:
    """`auto`: CUDA if present, then Apple's MPS, else the CPU."""
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(kind)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where autocast pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `trainer.precision`, or None for plain fp32.

    auto: bf16 on CUDA GPUs that have it, else fp32 (the course's numbers); fast: bf16 wherever
    it is native (those GPUs, and CPUs with AVX512-BF16 or AMX), else fp32.
    """
    if precision in ("auto", "fast"):
        native = device.type == "cuda" and torch.cuda.is_bf16_supported()
        cpu = device.type == "cpu" and cpu_has_native_bf16()
        chosen = torch.bfloat16 if native or (precision == "fast" and cpu) else None
        why = "a CUDA GPU with bf16" if native else f"{device.type}"
        if cpu and chosen is None:
            why += "; this CPU has native bf16: trainer.precision=fast uses it (faster conv nets)"
        log.info(f"precision {precision}: {'bf16 autocast' if chosen else 'fp32'} ({why})")
        return chosen
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(dtype: torch.dtype | None, device: torch.device):
    """Autocast to `dtype` (autocast_dtype's answer), or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The data order of an epoch depends on the seed and the epoch number alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    def __init__(
        self,
        cfg: DictConfig,
        device: torch.device,
        run_dir: Path,
        seed: int,
        writer,
        config_yaml: str,
        resume_command: str = "",
        dist: Dist | None = None,
        run_id: str | None = None,
    ) -> None:
        # A plain namespace: a DictConfig lookup costs microseconds, and the loop reads the
        # settings every epoch (1,000-epoch course runs of a tiny net are mostly overhead).
        self.cfg = cfg = namespace(OmegaConf.to_container(cfg, resolve=True))
        self.run_id = run_id
        self.device = device
        self.run_dir = run_dir
        self.seed = seed
        self.writer = writer
        self.config_yaml = config_yaml
        self.resume_command = resume_command
        self.dist = dist or Dist()
        self.dtype = autocast_dtype(cfg.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.channels_last = False
        self.closed_form: closed_form.ClosedFormMLP | None = None
        self.signal: int | None = None
        self.loop = LoopState()
        self.monitor: str | None = None  # the metric that picks best.pt (and the sweep objective)

    def autocast(self):
        return autocast(self.dtype, self.device)

    def prepare(self, model: nn.Module) -> None:
        """Move the model to the device; channels-last memory for conv nets."""
        has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
        wants = getattr(model, "channels_last", True)  # a model may opt out (style transfer)
        self.channels_last = bool(self.cfg.channels_last and has_conv and wants)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)

    def _memory_format(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    # ----------------------------------------------------------------- evaluation
    @torch.inference_mode()
    def evaluate(
        self, task, model: nn.Module, data: Data, split: Split, batch_size: int, keep: bool = False
    ) -> tuple[dict[str, float], torch.Tensor | None]:
        """Metrics over a whole split (and the outputs, if `keep`)."""
        n = len(split)
        if not n:
            return {}, None
        _mode(model, False)
        task.start_eval()
        forward = self.closed_form or model
        sums: dict[str, torch.Tensor] = {}
        outputs = []
        for x, y in data.batches(split, batch_size):
            with self.autocast():
                batch_sums, out = task.eval_step(forward, self._memory_format(x), y)
            for k, v in batch_sums.items():
                sums[k] = sums[k] + v if k in sums else v
            if keep and out is not None:
                outputs.append(out.float())
        return task.summarize(sums, n), torch.cat(outputs) if keep and outputs else None

    # ------------------------------------------------------------------- training
    def fit(
        self,
        task,
        model: nn.Module,
        data: Data,
        optimizers: dict[str, torch.optim.Optimizer],
        scheduler,
        scheduler_interval: str,
        batch_size: int,
        eval_batch_size: int,
        hparams: dict[str, Any],
        resume: dict[str, Any] | None = None,
        objective: str | None = None,
    ) -> dict[str, Any]:
        """Train; `objective` (a val/ or train/ metric) picks best.pt and early stopping,
        by default the task's validation metric."""
        cfg = self.cfg
        self.prepare(model)
        self.task, self.model, self.data = task, model, data
        self.optimizers, self.scheduler = optimizers, scheduler
        names = {id(p): n for n, p in model.named_parameters()}
        self._params = {}  # per optimizer: what it updates, and the weights L1 applies to
        for key, opt in optimizers.items():
            params = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
            weights = [p for p in params if names.get(id(p), "").endswith("weight")]
            count = max(1, sum(w.numel() for w in weights))
            self._params[key] = {"all": params, "weights": weights, "count": count}
        self._l1, self._clip = float(cfg.l1), cfg.grad_clip
        optimizer = optimizers["optimizer"]  # the main one: its learning rate is logged
        # Written-out gradients for plain MLPs (dlexp.closed_form), in fp32 and one process.
        plain = cfg.closed_form and self.dtype is None and not self.dist.active
        usable = plain and closed_form.why_not(model, task, optimizers, cfg.compile) is None
        self.closed_form = closed_form.ClosedFormMLP(model, task) if usable else None
        if usable:
            log.info(
                "gradients in closed form, without autograd (trainer.closed_form=false: autograd)"
            )
        step_model = model
        if cfg.compile:
            log.info("compiling the model with torch.compile (the first steps will be slow)")
            step_model = torch.compile(model)
        if self.dist.active:  # gradients averaged over the processes
            ids = [self.device.index] if self.device.type == "cuda" else None
            step_model = nn.parallel.DistributedDataParallel(step_model, device_ids=ids)
        steps_per_epoch = self.steps_per_epoch(len(data.train), batch_size)
        stop = cfg.early_stopping
        self.monitor = f"val/{task.monitor}" if len(data.val) else f"train/{task.monitor}"
        if objective and objective.startswith(("val/", "train/")):
            self.monitor = objective  # the sweep's objective picks best.pt too
        sign = 1 if higher_is_better(self.monitor) else -1

        self.loop = LoopState(best=-math.inf * sign)
        self.history: list[dict[str, Any]] = []
        if resume is not None:
            self._restore(resume)
            log.info(
                f"resuming at epoch {self.loop.epoch + 1} of {cfg.epochs}, batch "
                f"{self.loop.batch} (step {self.loop.step})"
            )
        task.begin(model, data, fresh=resume is None)
        start = time.perf_counter()
        metrics: dict[str, float] = dict(self.history[-1]) if self.history else {}

        if cfg.eval_before and resume is None:  # the starting point, e.g. before fine-tuning
            before = {}
            for split in ("val", "test"):
                values, _ = self.evaluate(task, model, data, getattr(data, split), eval_batch_size)
                before.update({f"{split}/{k}": v for k, v in values.items()})
            log_scalars(self.writer, before, self.loop.step)
            self.history.append({"epoch": 0, **before})
            log.info("before training: " + "  ".join(f"{k} {v:.4f}" for k, v in before.items()))

        loop = self.loop
        # The task's images (reconstructions, samples) about 50 times a run at most: every epoch
        # of a 1,000-epoch run would write hundreds of megabytes of pictures.
        report_every = cfg.report_every_epochs or max(1, cfg.epochs // 50)
        weight_log = WeightLog() if cfg.log_weights else None
        extra = type(task).extra_metrics is not Task.extra_metrics  # (a GAN's sample quality)
        self.lr = optimizer.param_groups[0]["lr"]
        self._saved_at, self._best = time.monotonic(), None
        shown = cfg.progress if self.dist.main else "none"
        with stop_signals(self), Progress(shown, cfg.epochs, steps_per_epoch) as progress:
            while loop.epoch < cfg.epochs:
                epoch = loop.epoch + 1
                progress.start_epoch(epoch, done=loop.batch)
                tic = time.perf_counter()
                step_scheduler = scheduler if scheduler_interval == "step" else None
                self._train_epoch(step_model, batch_size, steps_per_epoch, step_scheduler, progress)
                seconds = time.perf_counter() - tic
                train = task.summarize(*self.dist.sum(loop.sums, loop.seen))
                val, _ = self.evaluate(task, model, data, data.val, eval_batch_size)
                metrics = {f"train/{k}": v for k, v in train.items()}
                metrics.update({f"val/{k}": v for k, v in val.items()})
                if extra:
                    metrics.update(
                        {f"val/{k}": v for k, v in self._extra(task, model, data).items()}
                    )
                if cfg.test_every_epoch:  # for learning curves and time-to-accuracy
                    test, _ = self.evaluate(task, model, data, data.test, eval_batch_size)
                    metrics.update({f"test/{k}": v for k, v in test.items()})
                metrics["lr"] = self.lr if step_scheduler else optimizer.param_groups[0]["lr"]
                log_scalars(self.writer, metrics, self.loop.step)
                if epoch == 1 or (resume is not None and epoch == loop.epoch + 1):
                    layout(self.writer, metrics)
                metrics["samples_per_s"] = loop.seen / seconds  # (metrics.json, not a curve)
                if epoch % report_every == 0 or epoch == cfg.epochs:
                    self._report(task.epoch_report, model, data)
                if weight_log is not None and self.dist.main:
                    weight_log.log(self.writer, model, data, loop.step)
                if scheduler is not None and scheduler_interval == "epoch":
                    scheduler.step()
                progress.end_epoch(epoch, metrics, seconds)

                # The validation metric picks best.pt (the training one when there is no val).
                key = self.monitor
                if key not in metrics:
                    known = ", ".join(k for k in metrics if k.startswith(("train/", "val/")))
                    raise DlexpError(
                        f"objective={key!r} is not a metric of this run; its metrics are {known}."
                    )
                improved = sign * (metrics[key] - loop.best) > stop.min_delta
                loop.epoch, loop.batch, loop.sums, loop.seen = epoch, 0, {}, 0
                loop.best = metrics[key] if improved else loop.best
                loop.stale = 0 if improved else loop.stale + 1
                self.history.append({"epoch": epoch, "train_seconds": seconds, **metrics})
                stopping = bool(stop.patience) and loop.stale >= stop.patience
                if cfg.checkpoint:
                    if improved:  # kept in memory, written with the next checkpoint
                        self._best = (copy.deepcopy(self._state()), len(self.history))
                    waited = time.monotonic() - self._saved_at >= cfg.checkpoint_interval
                    if waited or stopping or epoch == cfg.epochs:
                        self._save()
                if stopping:
                    log.info(f"early stopping: no better {key} for {stop.patience} epoch(s)")
                    break

        test, outputs = self.evaluate(task, model, data, data.test, eval_batch_size, keep=True)
        if outputs is not None:
            test.update(task.test_metrics(outputs, data.test.y))
        final = {**metrics, **{f"test/{k}": v for k, v in test.items()}}
        final.update(epochs=loop.epoch, steps=loop.step, monitor=self.monitor)
        final["time_s"] = time.perf_counter() - start
        if not cfg.test_every_epoch:
            log_scalars(self.writer, {f"test/{k}": v for k, v in test.items()}, loop.step)
        self._report(task.final_report, model, data, outputs, run_dir=self.run_dir)
        write_hparams(self.writer, hparams, final)
        self.writer.flush()
        final["history"] = self.history
        return final

    def steps_per_epoch(self, n_train: int, batch_size: int) -> int:
        """Optimizer steps in one epoch: this process's share, capped by max_steps_per_epoch."""
        steps = math.ceil(n_train / (batch_size * self.dist.world))
        return min(steps, self.cfg.max_steps_per_epoch or steps)

    def _optimizer_step(self, key: str, compute) -> torch.Tensor:
        """The one way any task's loss becomes an update of optimizer `key`: autocast, the L1
        term (the course's: l1 x the mean absolute weight), scaled backward, gradient clipping of that optimizer's parameters, the step."""
        optimizer = self.optimizers[key]
        params = self._params[key]
        l1, clip = self._l1, self._clip
        losses = []

        def closure() -> torch.Tensor:  # L-BFGS evaluates it several times per step
            optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                loss = compute()
                # The course's L1 term: l1 x the mean absolute weight (biases excluded).
                mean_abs = sum(w.abs().sum() for w in params["weights"]) / params["count"]
                total = loss + l1 * mean_abs if l1 else loss
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

    def _closed_form_step(self, x: torch.Tensor, y: torch.Tensor):
        """Task.train_step's one forward pass and _optimizer_step's update, with the
        gradients written out (dlexp.closed_form) instead of taken by autograd."""
        optimizer, params = self.optimizers["optimizer"], self._params["optimizer"]
        out, loss = self.closed_form.gradients(x, y)
        if self._l1:  # the L1 term's gradient: l1 x sign(w) / (number of weights)
            for w in params["weights"]:
                w.grad.add_(w.detach().sign(), alpha=self._l1 / params["count"])
        if self._clip:
            nn.utils.clip_grad_norm_(params["all"], self._clip)
        optimizer.step()
        return loss, self.task.sums(out, y, loss, x)

    def _train_epoch(self, step_model, batch_size, steps, step_scheduler, progress) -> None:
        """The rest of the current epoch; metric sums stay on the device."""
        cfg, loop, task = self.cfg, self.loop, self.task
        # Plain Python copies of what is read every step (a DictConfig lookup is slow).
        log_every = int(cfg.log_every_steps)
        every_steps = cfg.checkpoint_every_steps or 0
        every_s = 60.0 * (cfg.checkpoint_every_minutes or 0)
        last_save = time.monotonic()
        unchecked: list[torch.Tensor] = []  # losses not yet checked for NaN (no sync per step)
        _mode(self.model, True)
        # The data order depends on the seed and the epoch; one batch of the whole split needs
        # none (its order changes no sum).
        whole = batch_size >= len(self.data.train) and self.dist.world == 1
        batches = self.data.batches(
            self.data.train,
            batch_size,
            None if whole else epoch_generator(self.seed, loop.epoch + 1),
            train=True,
            start=loop.batch * batch_size,
            shard=(self.dist.rank, self.dist.world),
        )
        for x, y in batches:
            if loop.batch >= steps:
                break
            if self.closed_form is not None:
                loss, step_sums = self._closed_form_step(x, y)
            else:
                loss, step_sums = task.train_step(
                    step_model, self._memory_format(x), y, self._optimizer_step
                )
            self.scaler.update()  # once per step, after every optimizer of the task stepped
            if step_scheduler is not None:
                self.lr = self.optimizers["optimizer"].param_groups[0]["lr"]  # the one just used
                step_scheduler.step()
            for k, v in step_sums.items():
                loop.sums[k] = loop.sums[k] + v if k in loop.sums else v
            unchecked.append(loss.detach())
            loop.seen += y.shape[0]
            loop.batch += 1
            loop.step += 1
            progress.advance(loss)
            step = loop.step
            due = (every_steps and step % every_steps == 0) or (
                every_s and time.monotonic() - last_save >= every_s
            )
            if step % log_every == 0 or due or self.signal is not None:
                self._check_finite(unchecked)
                if step % log_every == 0:  # this step's metrics (the only syncs mid-epoch)
                    for k, v in step_sums.items():
                        self.writer.add_scalar(f"train/{k}_step", v.item() / y.shape[0], step)
            if (due or self.signal is not None) and cfg.checkpoint:
                self._save()
                last_save = time.monotonic()
            if self.signal is not None:
                self._stop_on_signal()
        self._check_finite(unchecked)

    # ------------------------------------------------------- faults and checkpoints
    def _check_finite(self, losses: list[torch.Tensor]) -> None:
        """`losses`: the last steps' (up to loop.step), emptied once checked; a NaN or
        infinite one stops the run."""
        if not losses:
            return
        values = [losses[0].item()] if len(losses) == 1 else torch.stack(losses).tolist()
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        losses.clear()
        if bad is None:
            return
        step, epoch = self.loop.step - len(values) + 1 + bad, self.loop.epoch + 1
        self._write_best()  # the best state so far is still good: keep it
        folder = self.run_dir / "checkpoints"
        kept = [p for p in (folder / "last.pt", folder / "best.pt") if p.is_file()]
        kept = f"The good checkpoints ({', '.join(map(str, kept))}) are kept. " if kept else ""
        raise Diverged(
            f"the training loss became NaN or infinite at epoch {epoch}, step {step}. {kept}"
            f"Try a lower learning rate (optimizer.lr), gradient clipping (trainer.grad_clip=1.0) "
            f"or fp32 (trainer.precision=fp32)."
        )

    def _state(self) -> dict[str, Any]:
        """Everything a checkpoint holds but the history (see checkpoint.FORMAT)."""
        return {
            "format": FORMAT,
            "run_id": self.run_id,
            "config": self.config_yaml,
            "meta": asdict(self.data.meta),
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "loop": asdict(self.loop),
            "rng": rng_state(),
        }

    def _save(self) -> None:
        """last.pt (where the loop stands) and, if a better epoch came since, best.pt."""
        self._saved_at = time.monotonic()
        if not self.dist.main:  # one writer per run
            return
        folder = self.run_dir / "checkpoints"
        self.writer.flush()  # the curves up to this checkpoint survive a SIGKILL with it
        try:
            save_checkpoint(folder / "last.pt", {**self._state(), "history": self.history})
            self._write_best()
        except (OSError, RuntimeError) as err:  # torch.save on a full disk: RuntimeError
            reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
            if "unexpected pos" in reason or "write" in reason.lower():
                reason = f"the disk is probably full: {reason}"
            raise DlexpError(
                f"could not write a checkpoint in {folder} ({reason}). The previous "
                "checkpoint there is intact. Free some space (or fix the folder's permissions) "
                f"and continue with: {self.resume_command}"
            ) from err

    def _write_best(self) -> None:
        if self._best is not None and self.dist.main:
            state, epochs = self._best
            path = self.run_dir / "checkpoints" / "best.pt"
            save_checkpoint(path, {**state, "history": self.history[:epochs]})
            self._best = None

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.loop = LoopState(**state["loop"])
        self.loop.sums = {k: v.to(self.device) for k, v in self.loop.sums.items()}
        self.history = list(state["history"])
        set_rng_state(state["rng"])

    def _stop_on_signal(self) -> None:
        name = signal.Signals(self.signal).name
        saved = "a checkpoint was written; " if self.cfg.checkpoint else ""
        raise Interrupted(
            self.signal,
            f"stopped by {name} in epoch {self.loop.epoch + 1}, after step {self.loop.step}; {saved}"
            f"continue with: {self.resume_command}",
        )

    @torch.inference_mode()
    def _extra(self, task, model: nn.Module, data: Data) -> dict[str, float]:
        _mode(model, False)
        return task.extra_metrics(model, data)

    # ---------------------------------------------------------------- TensorBoard
    @torch.inference_mode()
    def _report(self, report, model: nn.Module, data: Data, *args, **kwargs) -> None:
        """A task's TensorBoard extras, computed in eval mode (and fp32) at the current step."""
        if not self.dist.main:
            return
        _mode(model, False)
        report(self.writer, model, data, *args, step=self.loop.step, **kwargs)


def log_scalars(writer, values: dict[str, float], step: int) -> None:
    """All of them in one event (add_scalar would write one event per value)."""
    writer.scalars(values, step)


def layout(writer, metrics: dict[str, float]) -> None:
    """TensorBoard's Custom Scalars tab: train against validation (and test) per metric, on
    one chart each, as the course plots them."""
    charts = {}
    for key in metrics:
        name = key.partition("/")[2]
        if key.startswith("train/") and f"val/{name}" in metrics:
            tags = [f"{split}/{name}" for split in ("train", "val", "test")]
            charts[name] = ["Multiline", [t for t in tags if t in metrics]]
    if charts:
        writer.add_custom_scalars({"train vs validation": charts})


def write_hparams(writer, hparams: dict[str, Any], final: dict[str, Any]) -> None:
    """HParams records in the run's own event file (add_hparams would make a sub-run)."""
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    metrics = {k: v for k, v in final.items() if k.startswith(("test/", "val/", "train/"))}
    # Only the session records: TensorBoard then builds the table from all runs together,
    # marking the hyperparameters whose values differ (the swept ones) to show first; an
    # experiment record of each run's own would say that none differs.
    _, session_start, session_end = hparams_summary(hparams, metrics)
    for summary in (session_start, session_end):
        writer.file_writer.add_summary(summary)


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    save_json(run_dir / "metrics.json", metrics)
