"""Regression: MSE by default; reports the Pearson correlation of predictions and targets too."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlexp.tasks.base import Task


class Regression(Task):
    monitor = "loss"
    num_outputs = 1

    def __init__(self, meta=None, loss: nn.Module | None = None):
        self.loss_fn = loss or nn.MSELoss()
        self.closed_form_loss = loss is None

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(out, y.view_as(out).to(out.dtype))

    def loss_and_grad(self, out, y):
        """MSE and its gradient, 2 (out - target) / N."""
        target = y.view_as(out).to(out.dtype)
        return F.mse_loss(out, target), (out - target) * (2.0 / out.numel())

    def sums(self, out, y, loss, inputs) -> dict[str, torch.Tensor]:
        p, t = out.detach().float().flatten(), y.float().flatten()
        return {
            "loss": loss.detach().float() * y.shape[0],
            "p": p.sum(),
            "t": t.sum(),
            "pp": (p * p).sum(),
            "tt": (t * t).sum(),
            "pt": (p * t).sum(),
        }

    def summarize(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        s = {k: v.double() for k, v in sums.items()}  # (or one value per job: see Task)
        n = max(count, 1)
        cov = s["pt"] / n - s["p"] * s["t"] / n**2
        var = (s["pp"] / n - (s["p"] / n) ** 2) * (s["tt"] / n - (s["t"] / n) ** 2)
        corr = torch.where(var > 0, cov / var.clamp_min(1e-300).sqrt(), 0.0)
        loss, corr = torch.stack([s["loss"] / n, corr]).tolist()
        return {"loss": loss, "corr": corr}
