"""The one training loop shared by every task.

It owns the device, precision, epochs, the data order, metrics, TensorBoard, checkpoints and
early stopping; what a step *means* (loss, metrics, extra images) belongs to the task.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from dlexp.checkpoint import save_checkpoint, save_json
from dlexp.data import Data, Split
from dlexp.progress import Progress

log = logging.getLogger("dlexp")


def pick_device(kind: str) -> torch.device:
    """`auto`: CUDA if present, then Apple's MPS, else the CPU."""
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(kind)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `trainer.precision`, or None for plain fp32."""
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The data order of an epoch depends on the seed and the epoch number alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class Trainer:
    def __init__(
        self,
        cfg: DictConfig,
        device: torch.device,
        run_dir: Path,
        seed: int,
        writer,
        config_yaml: str,
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.run_dir = run_dir
        self.seed = seed
        self.writer = writer
        self.config_yaml = config_yaml
        self.dtype = autocast_dtype(cfg.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.channels_last = False

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # ----------------------------------------------------------------- evaluation
    @torch.inference_mode()
    def evaluate(
        self, task, model: nn.Module, data: Data, split: Split, batch_size: int, keep: bool = False
    ) -> tuple[dict[str, float], torch.Tensor | None]:
        """Metrics over a whole split (and the outputs, if `keep`)."""
        model.eval()
        sums: dict[str, torch.Tensor] = {}
        outputs = []
        for x, y in data.batches(split, batch_size):
            with self.autocast():
                out = model(self._memory_format(x))
                loss = task.loss(out, y)
            for k, v in task.sums(out, y, loss).items():
                sums[k] = sums[k] + v if k in sums else v
            if keep:
                outputs.append(out.float())
        metrics = task.summarize(sums, len(split)) if len(split) else {}
        return metrics, torch.cat(outputs) if keep and outputs else None

    def prepare(self, model: nn.Module) -> None:
        """Move the model to the device; channels-last memory for conv nets."""
        has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
        self.channels_last = bool(self.cfg.channels_last and has_conv)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)

    def _memory_format(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    # ------------------------------------------------------------------- training
    def fit(
        self,
        task,
        model: nn.Module,
        data: Data,
        optimizer: torch.optim.Optimizer,
        scheduler,
        scheduler_interval: str,
        batch_size: int,
        eval_batch_size: int,
        hparams: dict[str, Any],
    ) -> dict[str, Any]:
        cfg = self.cfg
        self.prepare(model)
        step_model = model
        if cfg.compile:
            log.info("compiling the model with torch.compile (the first steps will be slow)")
            step_model = torch.compile(model)
        steps_per_epoch = math.ceil(len(data.train) / batch_size)
        if cfg.get("max_steps_per_epoch"):
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
        stop = cfg.early_stopping
        best = -math.inf if task.mode == "max" else math.inf
        sign = 1 if task.mode == "max" else -1
        stale, step, epoch = 0, 0, 0
        metrics: dict[str, float] = {}
        history: list[dict[str, float]] = []
        start = time.perf_counter()

        with Progress(cfg.progress, cfg.epochs, steps_per_epoch) as progress:
            for epoch in range(1, cfg.epochs + 1):
                progress.start_epoch(epoch)
                tic = time.perf_counter()
                train, step = self._train_epoch(
                    task,
                    model,
                    step_model,
                    data,
                    optimizer,
                    scheduler if scheduler_interval == "step" else None,
                    batch_size,
                    steps_per_epoch,
                    epoch,
                    step,
                    progress,
                )
                seconds = time.perf_counter() - tic
                val, _ = self.evaluate(task, model, data, data.val, eval_batch_size)
                metrics = {f"train/{k}": v for k, v in train.items()}
                metrics.update({f"val/{k}": v for k, v in val.items()})
                if cfg.test_every_epoch:  # for learning curves and time-to-accuracy
                    test, _ = self.evaluate(task, model, data, data.test, eval_batch_size)
                    metrics.update({f"test/{k}": v for k, v in test.items()})
                metrics["lr"] = optimizer.param_groups[0]["lr"]
                metrics["samples_per_s"] = (
                    min(len(data.train), steps_per_epoch * batch_size) / seconds
                )
                for k, v in metrics.items():
                    self.writer.add_scalar(k, v, epoch)
                if scheduler is not None and scheduler_interval == "epoch":
                    scheduler.step()
                progress.end_epoch(epoch, metrics, seconds)
                history.append({"epoch": epoch, "train_seconds": seconds, **metrics})

                # The validation metric picks best.pt (the training one when there is no val).
                key = f"val/{task.monitor}" if val else f"train/{task.monitor}"
                improved = sign * (metrics[key] - best) > stop.min_delta
                stale = 0 if improved else stale + 1
                best = metrics[key] if improved else best
                if cfg.checkpoint:
                    state = self._state(model, optimizer, scheduler, epoch, step, metrics)
                    if improved:
                        save_checkpoint(self.run_dir / "checkpoints" / "best.pt", state)
                    save_checkpoint(self.run_dir / "checkpoints" / "last.pt", state)
                if stop.patience and stale >= stop.patience:
                    log.info(f"early stopping: no better {key} for {stop.patience} epoch(s)")
                    break

        test, outputs = self.evaluate(task, model, data, data.test, eval_batch_size, keep=True)
        final = {**metrics, **{f"test/{k}": v for k, v in test.items()}}
        final.update(epochs=epoch, steps=step, time_s=time.perf_counter() - start)
        for k, v in test.items():
            if not cfg.test_every_epoch:
                self.writer.add_scalar(f"test/{k}", v, epoch)
        if outputs is not None:
            task.final_report(self.writer, outputs, data.test.y, epoch)
        self._write_hparams(hparams, final)
        self.writer.flush()
        final["history"] = history
        return final

    def _train_epoch(
        self,
        task,
        model,
        step_model,
        data,
        optimizer,
        step_scheduler,
        batch_size,
        steps,
        epoch,
        step,
        progress,
    ) -> tuple[dict[str, float], int]:
        """One pass over the training split; metrics stay on the device until the end."""
        # Plain Python copies of what is read every step (a DictConfig lookup is slow).
        l1, clip, log_every = float(self.cfg.l1), self.cfg.grad_clip, int(self.cfg.log_every_steps)
        weights = [
            p for n, p in model.named_parameters() if p.requires_grad and n.endswith("weight")
        ]
        model.train()
        sums: dict[str, torch.Tensor] = {}
        seen = 0
        batches = data.batches(
            data.train, batch_size, epoch_generator(self.seed, epoch), train=True
        )
        for _, (x, y) in zip(range(steps), batches, strict=False):
            with self.autocast():
                out = step_model(self._memory_format(x))
                loss = task.loss(out, y)
                total = loss + l1 * sum(w.abs().sum() for w in weights) if l1 else loss
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            if clip:
                self.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            self.scaler.step(optimizer)
            self.scaler.update()
            if step_scheduler is not None:
                step_scheduler.step()
            for k, v in task.sums(out, y, loss).items():
                sums[k] = sums[k] + v if k in sums else v
            seen += len(y)
            step += 1
            if step % log_every == 0:
                self.writer.add_scalar("train/loss_step", loss.item(), step)
            progress.advance(loss)
        return task.summarize(sums, seen), step

    def _state(self, model, optimizer, scheduler, epoch: int, step: int, metrics) -> dict:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": epoch,
            "step": step,
            "metrics": dict(metrics),
            "rng": {"torch": torch.get_rng_state()},
            "config": self.config_yaml,
        }

    def _write_hparams(self, hparams: dict[str, Any], final: dict[str, Any]) -> None:
        """HParams records in the run's own event file (add_hparams would make a sub-run)."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        metrics = {k: v for k, v in final.items() if k.startswith(("test/", "val/", "train/"))}
        for summary in hparams_summary(hparams, metrics):
            self.writer.file_writer.add_summary(summary)


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    save_json(run_dir / "metrics.json", metrics)
