"""Reconstruction (autoencoders): the target is the clean input; the input may be corrupted
with noise (denoising) or occluding bars, while training and scoring (a denoising autoencoder)
or only when scoring (the course: trained on clean digits, shown corrupted ones). Images are
expected in [0, 1] (data.normalize=unit)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
from torch import nn

from dlexp.settings import OneOf, Range
from dlexp.tasks.base import Task


def shown(x: torch.Tensor, data) -> torch.Tensor:
    """Images for display in [0, 1]: uint8-based ones as prepared (data.normalize=unit), those in
    [-1, 1] (data.normalize=symmetric, and generated float images) mapped back, as the course
    plots them (pic/2 + .5)."""
    if data.test.x.is_floating_point() or data.normalize == "symmetric":
        x = (x + 1) / 2
    return x.clamp(0, 1)


class Reconstruction(Task):
    monitor = "loss"

    def __init__(
        self,
        meta=None,
        loss: nn.Module | None = None,
        noise: Annotated[float, Range(0, says="a number >= 0 (the noise's std)")] = 0.0,
        noise_kind: Annotated[str, OneOf("gaussian", "uniform")] = "gaussian",
        occlusion: Annotated[int, Range(0, says="a whole number of pixels >= 0")] = 0,
        corrupt: Annotated[str, OneOf("both", "test")] = "both",
        show: Annotated[int, Range(1, says="a whole number of images >= 1")] = 8,
    ):
        self.loss_fn = loss or nn.MSELoss()
        self.noise, self.occlusion, self.show = float(noise), int(occlusion), int(show)
        self.noise_kind = noise_kind
        self.corrupts = bool(self.noise or self.occlusion)
        self.corrupt_train = self.corrupts and corrupt == "both"
        self._gen: torch.Generator | None = None

    def start_eval(self) -> None:
        self._gen = None  # evaluation corrupts the same way every time

    def corrupt(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if self.noise:
            if self.noise_kind == "uniform":  # the course's x + rand/4: brighter, never darker
                draw = torch.rand(x.shape, generator=gen, device=x.device)
            else:
                draw = torch.randn(x.shape, generator=gen, device=x.device)
            x = (x + self.noise * draw).clamp(0, 1)
        if self.occlusion and x.dim() == 4:  # one white bar per image, across or down
            b, _, h, w = x.shape
            side = min(h, w)
            width = min(self.occlusion, side)
            # Bars start in the central band (rows/columns 10-20 of 28, as the course draws
            # them): there they cross the object, not an empty border.
            lo = min(round(side * 10 / 28), side - width)
            hi = max(lo, min(round(side * 20 / 28), side - width))
            pos = torch.randint(lo, hi + 1, (b, 1), generator=gen, device=x.device)
            across = torch.randint(0, 2, (b, 1, 1, 1), generator=gen, device=x.device).bool()
            rows = torch.arange(h, device=x.device).view(1, h)
            cols = torch.arange(w, device=x.device).view(1, w)
            in_rows = ((rows >= pos) & (rows < pos + width)).view(b, 1, h, 1)
            in_cols = ((cols >= pos) & (cols < pos + width)).view(b, 1, 1, w)
            x = torch.where(torch.where(across, in_rows, in_cols), torch.ones_like(x), x)
        return x

    def prepare(self, x, y, train):
        if not self.corrupts or (train and not self.corrupt_train):
            return x, x
        gen = None
        if not train:
            if self._gen is None or self._gen.device != x.device:
                self._gen = torch.Generator(device=x.device).manual_seed(0)
            gen = self._gen
        return self.corrupt(x, gen), x

    def loss(self, out, target):
        return self.loss_fn(out, target)

    def sums(self, out, target, loss, inputs):
        n = len(target)
        per_sample = lambda a: (a.float() - target.float()).pow(2).flatten(1).mean(1).sum()  # noqa: E731
        sums = {"loss": loss.detach().float() * n, "mse": per_sample(out.detach())}
        if inputs is not target:  # corrupted inputs (not while training in corrupt=test)
            sums["input_mse"] = per_sample(inputs)
        return sums

    def summarize(self, sums, count):
        metrics = super().summarize(sums, count)
        if "input_mse" in metrics:  # how much cleaner than its corrupted input the output is
            metrics["gain"] = [
                a - b for a, b in zip(metrics["input_mse"], metrics["mse"], strict=True)
            ]
        return metrics

    def _grid(self, model, data) -> torch.Tensor:
        """Rows: clean test images, their corrupted version (if any), the reconstructions."""
        from torchvision.utils import make_grid

        self.start_eval()
        x = data.prepare(data.test.x[: self.show])
        inputs, clean = self.prepare(x, None, train=False)
        out = model(inputs).float().view_as(clean)
        rows = [clean, inputs, out] if self.corrupts else [clean, out]
        return make_grid(shown(torch.cat(rows), data).cpu(), nrow=len(clean), pad_value=1.0)

    def epoch_report(self, writer, model, data, step):
        if data.meta.kind == "image":
            writer.add_image("reconstructions", self._grid(model, data), step)

    def final_report(self, writer, model, data, outputs, step, run_dir: Path):
        if data.meta.kind != "image":
            return
        from torchvision.utils import save_image

        save_image(self._grid(model, data), run_dir / "reconstructions.png")
        if not hasattr(model, "encode"):
            return
        n = min(len(data.test), 1000)
        x = data.prepare(data.test.x[:n])
        codes = model.encode(x).float().flatten(1)
        labels = data.test.y[:n].cpu()
        writer.add_embedding(
            codes.cpu(),
            metadata=labels.tolist(),
            label_img=shown(x, data).cpu(),
            global_step=step,
            tag="latent",
        )
        # A 2-D PCA of the codes, coloured by class: the course's latent-space picture.
        centred = codes - codes.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        xy = (centred @ v[:2].T).cpu()
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 5), dpi=100)
        points = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=6)
        ax.legend(*points.legend_elements(), title="class", fontsize=7, loc="best")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_title("test latent codes")
        fig.tight_layout()
        fig.savefig(run_dir / "latent_pca.png")
        writer.add_figure("test/latent_pca", fig, step)
