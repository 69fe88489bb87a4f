"""Progress display: a rich bar on terminals, one line per epoch otherwise."""

from __future__ import annotations

import logging
import sys
import time

import torch
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

log = logging.getLogger("dlexp")


def format_metrics(metrics: dict[str, float]) -> str:
    parts = []
    for k, v in metrics.items():
        if k.startswith(("train/", "val/", "test/")):
            parts.append(f"{k} {v:.4f}")
    return "  ".join(parts)


class Progress:
    """mode: auto (bar on a terminal, else log), bar, log (a line per epoch) or none."""

    def __init__(self, mode: str, epochs: int, steps_per_epoch: int) -> None:
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "log"
        self.mode, self.epochs, self.steps = mode, epochs, steps_per_epoch
        self.bar: RichProgress | None = None
        self._last = 0.0

    def __enter__(self) -> Progress:
        if self.mode == "bar":
            self.bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self.bar.start()
            self.epoch_task = self.bar.add_task("epochs", total=self.epochs, info="")
            self.step_task = self.bar.add_task("batches", total=self.steps, info="")
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def start_epoch(self, epoch: int, done: int = 0) -> None:
        if self.bar is not None:
            self.bar.update(self.epoch_task, completed=epoch - 1)
            self.bar.reset(
                self.step_task, total=self.steps, completed=done, description=f"epoch {epoch}"
            )

    def advance(self, loss: torch.Tensor) -> None:
        if self.bar is None:
            return
        now = time.monotonic()
        info = None
        if now - self._last > 0.25:  # read the loss (a host sync) a few times a second only
            self._last, info = now, f"loss {loss.item():.4f}"
        self.bar.update(self.step_task, advance=1, **({"info": info} if info else {}))

    def end_epoch(self, epoch: int, metrics: dict[str, float], seconds: float) -> None:
        if self.bar is not None:
            self.bar.update(self.epoch_task, completed=epoch)
        if self.mode != "none":
            log.info(f"epoch {epoch}/{self.epochs}  {format_metrics(metrics)}  ({seconds:.1f}s)")


def console_handler() -> logging.Handler:
    """Log to the terminal through rich (so lines print above the progress bar); plain text
    without wrapping when the output is a file or pipe."""
    if sys.stdout.isatty():
        from rich.logging import RichHandler

        return RichHandler(show_time=False, show_level=False, show_path=False, markup=False)
    handler = _Stdout()
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a line is logged (a redirect, pytest's capture)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass
