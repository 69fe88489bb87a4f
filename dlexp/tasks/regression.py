"""Regression: MSE by default; reports the Pearson correlation of predictions and targets too
(of all outputs pooled, when a sample has several targets)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dlexp.data import DataMeta
from dlexp.tasks.base import Task


class Regression(Task):
    monitor = "loss"

    def __init__(self, meta: DataMeta | None = None, loss: nn.Module | None = None):
        self.loss_fn = loss
        self.num_outputs = meta.num_targets if meta is not None else 1
        # a series (DUDL_RNN_altSequences): the share of predictions with the right sign too
        self.signs = meta is not None and meta.kind == "sequence"

    @staticmethod
    def why_not_stacked(loss=None, **settings) -> str | None:
        return "a loss config is set" if loss else None

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """MSE by default: the mean over the batch (one value per job in a stacked group)."""
        target = y.view_as(out).to(out.dtype)
        if self.loss_fn is not None:
            return self.loss_fn(out, target)
        return F.mse_loss(out, target, reduction="none").flatten(-2).mean(-1)

    def sums(self, out, y, loss, inputs) -> dict[str, torch.Tensor]:
        p, t = out.detach().float().flatten(-2), y.float().flatten(-2)
        return {
            "loss": loss.detach().float() * y.shape[-2],
            "p": p.sum(-1),
            "t": t.sum(-1),
            "pp": (p * p).sum(-1),
            "tt": (t * t).sum(-1),
            "pt": (p * t).sum(-1),
        }

    def summarize(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        s = {k: v.double() for k, v in sums.items()}  # (one value per job: see Task)
        n = max(count, 1) * self.num_outputs  # values: the outputs of several pooled
        cov = s["pt"] / n - s["p"] * s["t"] / n**2
        var = (s["pp"] / n - (s["p"] / n) ** 2) * (s["tt"] / n - (s["t"] / n) ** 2)
        corr = torch.where(var > 0, cov / var.clamp_min(1e-300).sqrt(), 0.0)
        loss, corr = torch.stack([s["loss"] / max(count, 1), corr]).tolist()
        return {"loss": loss, "corr": corr}

    def test_metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        if not self.signs:
            return {}
        same = torch.sign(outputs.float().view_as(targets)) == torch.sign(targets.float())
        return {"sign_acc": same.float().mean().item()}

    def final_report(self, writer, model, data, outputs, step: int, run_dir: Path) -> None:
        """A series (data=sine, alternating): its future predicted one step ahead and
        free-running, against repeating the last value (extrapolation.png and .json, the
        figure in TensorBoard)."""
        if data.meta.series is None or not hasattr(model, "step"):
            return
        from dlexp.generate import extrapolate, extrapolation_figure

        result = extrapolate(model, data)
        numbers = {k: v for k, v in result.items() if k.endswith("_mse")}
        (run_dir / "extrapolation.json").write_text(json.dumps(numbers, indent=1) + "\n")
        figure = extrapolation_figure(result, data.meta.name)
        figure.savefig(run_dir / "extrapolation.png")
        writer.add_figure("test/extrapolation", figure, step)  # (closes it)
