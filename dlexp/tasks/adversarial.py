"""Adversarial training (GANs): two optimizers, BCE losses, sample grids, a quality score.

Each step first trains the discriminator on a real batch (label 1) and a generated one
(label 0), then the generator to make the discriminator say 1. Metrics: d_loss, g_loss,
d_real = mean D(x) and d_fake = mean D(G(z)) (as probabilities). With
`task.quality_from=<classifier run>` (a dlexp classifier of the same data), every evaluation
also scores generated samples with it: `quality` is the classifier-based Inception score
(exp of the mean KL divergence between per-sample and average class probabilities: high when
samples are confidently recognisable and varied) and `confidence` its mean top probability.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from dlexp.settings import Range
from dlexp.tasks.base import Task

log = logging.getLogger("dlexp")


def bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


class Adversarial(Task):
    ddp_ready = False

    def __init__(
        self,
        meta=None,
        loss=None,
        show: Annotated[int, Range(1, says="a whole number of images >= 1")] = 64,
        quality_from: str | None = None,
        quality_samples: Annotated[int, Range(2, says="a whole number of samples >= 2")] = 500,
    ):
        self.show, self.quality_samples = int(show), int(quality_samples)
        self._gen: torch.Generator | None = None
        self.quality_from = quality_from
        self.classifier: nn.Module | None = None
        self.monitor = "quality" if quality_from else "g_loss"

    def parameter_groups(self, model) -> dict[str, list]:
        return {
            "optimizer": list(model.generator.parameters()),
            "optimizer_d": list(model.discriminator.parameters()),
        }

    def train_step(self, model, x, y, step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The discriminator on a real and a generated batch, then the generator."""
        n, logits = len(x), {}

        def d_loss() -> torch.Tensor:
            logits["fake_images"] = model.sample(n)
            logits["real"] = model.discriminator(x).float()
            logits["fake"] = model.discriminator(logits["fake_images"].detach()).float()
            return bce(logits["real"], 1.0) + bce(logits["fake"], 0.0)

        def g_loss() -> torch.Tensor:
            return bce(model.discriminator(logits["fake_images"]).float(), 1.0)

        loss_d = step("optimizer_d", d_loss)
        loss_g = step("optimizer", g_loss)
        sums = {
            "d_loss": loss_d * n,
            "g_loss": loss_g * n,
            "d_real": torch.sigmoid(logits["real"].detach()).sum(),
            "d_fake": torch.sigmoid(logits["fake"].detach()).sum(),
        }
        return loss_d + loss_g, sums

    def eval_step(self, model, x, y):
        """D on real held-out images and on generated ones (fixed noise: repeatable)."""
        n = len(x)
        if self._gen is None or self._gen.device != x.device:
            self._gen = torch.Generator(device=x.device).manual_seed(0)
        d_real = model.discriminator(x).float()
        d_fake = model.discriminator(model.sample(n, self._gen)).float()
        loss_d = bce(d_real, 1.0) + bce(d_fake, 0.0)
        loss_g = bce(d_fake, 1.0)
        sums = {
            "d_loss": loss_d * n,
            "g_loss": loss_g * n,
            "d_real": torch.sigmoid(d_real).sum(),
            "d_fake": torch.sigmoid(d_fake).sum(),
        }
        return sums, None

    def start_eval(self) -> None:
        self._gen = None

    def extra_metrics(self, model, data) -> dict[str, float]:
        """The classifier-based quality score of fresh samples (if a classifier was given)."""
        if not self.quality_from:
            return {}
        classifier = self._classifier(data, next(model.parameters()).device)
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(1)
        images = (model.sample(self.quality_samples, gen).float() + 1) / 2  # to [0, 1]
        probs = torch.softmax(classifier(self._as_classifier_input(images, data)).float(), dim=1)
        marginal = probs.mean(0, keepdim=True)
        kl = (probs * (probs.clamp_min(1e-12).log() - marginal.clamp_min(1e-12).log())).sum(1)
        return {"quality": kl.mean().exp().item(), "confidence": probs.max(1).values.mean().item()}

    def runs(self) -> dict[str, str]:
        return {"quality": self.quality_from} if self.quality_from else {}

    def use_runs(self, loaded) -> None:
        if "quality" in loaded:
            self.classifier_meta = loaded["quality"].meta
            self.classifier = loaded["quality"].model.eval()
            log.info(f"quality score: samples are judged by the classifier in {self.quality_from}")

    def _classifier(self, data, device) -> nn.Module:
        return self.classifier.to(device)

    def _as_classifier_input(self, images: torch.Tensor, data) -> torch.Tensor:
        meta = self.classifier_meta
        h, w = meta.input_shape[-2:]
        if images.shape[-2:] != (h, w):
            images = F.interpolate(
                images, size=(h, w), mode="bilinear", antialias=True, align_corners=False
            )
        mean = torch.tensor(meta.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(meta.std, device=images.device).view(1, -1, 1, 1)
        return (images - mean) / std

    def _grid(self, model) -> torch.Tensor:
        from torchvision.utils import make_grid

        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
        samples = (model.sample(self.show, gen).float().cpu() + 1) / 2
        return make_grid(samples.clamp(0, 1), nrow=int(self.show**0.5), pad_value=1.0)

    def epoch_report(self, writer, model, data, step):
        writer.add_image("samples", self._grid(model), step)

    def final_report(self, writer, model, data, outputs, step, run_dir: Path):
        from torchvision.utils import save_image

        save_image(self._grid(model), run_dir / "samples.png")
