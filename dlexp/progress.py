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
    """mode: auto (bar on a terminal, else log), bar, log (epoch lines) or none.

    Epoch lines (in log mode, and above the bar) come about 50 times a run at most: every
    epoch of a 1,000-epoch course run would print 1,000 lines in a fraction of a second (the
    full history is in metrics.json and TensorBoard). The bar is redrawn in this thread, at
    most four times a second: an update costs more than a tiny net's step, and rich's own
    refresh thread would compete with training for the GIL.
    """

    def __init__(self, mode: str, epochs: int, steps_per_epoch: int) -> None:
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "log"
        self.mode, self.epochs, self.steps = mode, epochs, steps_per_epoch
        self.every = max(1, epochs // 50)  # an epoch line every this many epochs
        self.bar: RichProgress | None = None
        self._epoch, self._done, self._finished, self._info = 0, 0, 0, ""
        self._shown_epoch, self._pushed = 0, -1.0

    def __enter__(self) -> Progress:
        if self.mode == "bar":
            self.bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                auto_refresh=False,
            )
            self.bar.start()
            self.epoch_task = self.bar.add_task("epochs", total=self.epochs, info="")
            self.step_task = self.bar.add_task("batches", total=self.steps, info="")
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self._push(force=True)
            self.bar.stop()

    def start_epoch(self, epoch: int, done: int = 0) -> None:
        self._epoch, self._done = epoch, done
        self._push()

    def advance(self, loss: torch.Tensor) -> None:
        if self.bar is None:
            return
        self._done += 1
        if time.monotonic() - self._pushed >= 0.25:
            self._info = f"loss {loss.item():.4f}"  # (a host sync: only when shown)
            self._push()

    def end_epoch(self, epoch: int, metrics: dict[str, float], seconds: float) -> None:
        self._finished = epoch
        self._push()
        shown = epoch % self.every == 0 or epoch in (1, self.epochs)
        if self.mode != "none" and shown:
            log.info(f"epoch {epoch}/{self.epochs}  {format_metrics(metrics)}  ({seconds:.1f}s)")

    def _push(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.bar is None or (not force and now - self._pushed < 0.25):
            return
        self._pushed = now
        self.bar.update(self.epoch_task, completed=self._finished)
        if self._epoch != self._shown_epoch:  # a new epoch: the batch bar starts again
            self._shown_epoch = self._epoch
            self.bar.reset(self.step_task, total=self.steps, description=f"epoch {self._epoch}")
        self.bar.update(self.step_task, completed=self._done, info=self._info)
        self.bar.refresh()


def console_handler() -> logging.Handler:
    """Log to the terminal through rich (so lines print above the progress bar); plain text
    without wrapping when the output is a file or pipe."""
    if sys.stdout.isatty():
        from rich.highlighter import NullHighlighter
        from rich.logging import RichHandler

        return RichHandler(  # (no highlighter: it costs a quarter of a millisecond a line)
            show_time=False,
            show_level=False,
            show_path=False,
            markup=False,
            highlighter=NullHighlighter(),
        )
    handler = _Stdout()
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def log_to_console() -> None:
    """dlexp's messages on the console, for the commands that Hydra does not run (eval,
    sample) and for runs started from Python."""
    logger = logging.getLogger("dlexp")
    logger.setLevel(logging.INFO)
    if not logger.handlers:  # once per process
        logger.addHandler(console_handler())


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a line is logged (a redirect, pytest's capture)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass
