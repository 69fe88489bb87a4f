"""The course's custom loss functions (the standard ones come straight from torch.nn)."""

from __future__ import annotations

import torch
from torch import nn


class MSEPlusMean(nn.Module):
    """MSE plus the absolute mean of the outputs, which pulls the outputs towards zero mean."""

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.mean((output - target) ** 2) + torch.abs(torch.mean(output))


class NegativeCorrelation(nn.Module):
    """Minus the Pearson correlation of outputs and targets (fits the shape, not the scale)."""

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        o, t = output.flatten().float(), target.flatten().float()
        o, t = o - o.mean(), t - t.mean()
        return -(o * t).sum() / (o.norm() * t.norm() + 1e-8)


class HandCrossEntropy(nn.Module):
    """Cross-entropy written out: log-softmax (with the max trick), then the mean negative
    log-probability of the true class. The course builds it by hand to show what
    nn.CrossEntropyLoss computes."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        shifted = logits - logits.max(dim=1, keepdim=True).values
        log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
        return -log_probs.gather(1, target.view(-1, 1)).mean()
