"""Style transfer: optimise an image so that its features match the content image and its
Gram matrices match the style image's (Gatys et al., as the course builds it).

loss = style_scale * sum_i w_i * mean((G_t,i - G_s,i)^2) + sum_j mean((F_t,j - F_c,j)^2),
with G = F F^T / (C H W) over the outputs of the chosen conv layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F

from dlexp.errors import DlexpError
from dlexp.settings import OneOf, Positive, Range
from dlexp.tasks.base import Task


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix of (1, C, H, W) features: F F^T / (C * H * W)."""
    _, c, h, w = features.shape
    f = features.reshape(c, h * w)
    return f @ f.T / (c * h * w)


class Stylize(Task):
    ddp_ready = False

    def __init__(
        self,
        meta=None,
        loss=None,
        content_layers: list[int] = (1, 4),
        style_layers: list[int] = (1, 2, 3, 4, 5),
        style_weights: list[float] = (1.0, 0.5, 0.5, 0.2, 0.1),
        style_scale: Positive = 1e6,
        init: Annotated[str, OneOf("noise", "content")] = "noise",
        out_size: Annotated[int, Range(1, says="a size in pixels >= 1")] | None = None,
    ) -> None:
        if meta is not None and meta.name != "style_images":
            raise DlexpError(
                f"task=stylize (model=style_transfer) paints one image in the style of another; "
                f"it needs data=style_images (data.content=<image> data.style=<image>), not "
                f"data={meta.name}. `dlexp stylize content=... style=...` sets both."
            )
        if len(style_weights) != len(style_layers):
            raise DlexpError(
                f"task.style_weights has {len(style_weights)} values for {len(style_layers)} "
                "task.style_layers; give one weight per style layer."
            )
        self.content_layers, self.style_layers = list(content_layers), list(style_layers)
        self.style_weights, self.style_scale = list(style_weights), float(style_scale)
        self.init, self.out_size = init, out_size

    def begin(self, model, data, fresh: bool) -> None:
        """Fix the content features and style Gram matrices; start the target image."""
        content, style = (data.prepare(data.train.x[data.train.y == i][:1]) for i in (0, 1))
        n = model.num_layers
        for i in [*self.content_layers, *self.style_layers]:
            if not 0 <= i < n:
                raise DlexpError(
                    f"task layer {i} does not exist: the backbone has conv layers 0..{n - 1}."
                )
        self.count = max(self.content_layers + self.style_layers) + 1  # deeper layers never run
        with torch.no_grad():
            feats_c, feats_s = model(content, self.count), model(style, self.count)
            self.content = [feats_c[i] for i in self.content_layers]
            self.styles = [gram(feats_s[i]) for i in self.style_layers]
            if fresh and self.init == "content":
                model.target.copy_(content)

    def losses(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        feats = model(model.target, self.count)
        content = sum(
            F.mse_loss(feats[i], c) for i, c in zip(self.content_layers, self.content, strict=True)
        )
        style = sum(
            w * F.mse_loss(gram(feats[i]), g)
            for i, w, g in zip(self.style_layers, self.style_weights, self.styles, strict=True)
        )
        return content, self.style_scale * style

    def train_step(self, model, x, y, step):
        parts = {}

        def compute() -> torch.Tensor:  # L-BFGS calls it several times per step
            content, style = self.losses(model)
            parts.update(content=content.detach().float(), style=style.detach().float())
            return content + style

        loss = step("optimizer", compute)
        parts["loss"] = loss.float()
        return loss, {k: v * len(x) for k, v in parts.items()}

    def eval_step(self, model, x, y):
        return {}, None

    def image(self, model) -> torch.Tensor:
        img = model.target.detach().float().clamp(0, 1)[0]
        if self.out_size:
            h, w = img.shape[-2:]
            scale = self.out_size / min(h, w)
            size = (round(h * scale), round(w * scale))
            img = F.interpolate(
                img[None], size=size, mode="bilinear", antialias=True, align_corners=False
            )[0]
        return img.cpu()

    def epoch_report(self, writer, model, data, step):
        writer.add_image("stylized", self.image(model), step)

    def final_report(self, writer, model, data, outputs, step, run_dir: Path):
        from torchvision.utils import save_image

        save_image(self.image(model), run_dir / "stylized.png")
