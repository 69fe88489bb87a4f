"""`trainer.log_weights=true`: what the course looks at inside a model, in TensorBoard.

Every epoch: a histogram of each parameter and of its last gradient, each parameter's change
since the previous epoch (the norm of the difference), the condition number of each weight
matrix (DUDL_weights_weightchanges' plots) and its gradient norm as scalars; for conv nets, the first conv layer's kernels and its feature
maps for one fixed test image as images. `show_feature_maps` (task.feature_maps): every conv
block's maps for the first test images, at the end.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class WeightLog:
    def __init__(self) -> None:
        self.previous: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def log(self, writer, model: nn.Module, data, step: int) -> None:
        scalars = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            weights = p.detach().float()
            writer.add_histogram(f"weights/{name}", weights.cpu(), step)
            if p.grad is not None:
                writer.add_histogram(f"grads/{name}", p.grad.detach().float().cpu(), step)
                scalars[f"grad_norm/{name}"] = float(p.grad.detach().float().norm())
            if name in self.previous:
                scalars[f"weight_change/{name}"] = float((weights - self.previous[name]).norm())
            if weights.dim() == 2:  # the course's condition numbers of the weight matrices
                scalars[f"weight_cond/{name}"] = float(torch.linalg.cond(weights))
            self.previous[name] = weights.clone()
        if scalars:
            writer.scalars(scalars, step)
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is not None and data.meta.kind == "image":
            self._conv_images(writer, model, conv, data, step)

    def _conv_images(self, writer, model: nn.Module, conv: nn.Conv2d, data, step: int) -> None:
        from torchvision.utils import make_grid

        kernels = conv.weight.detach().float().cpu()  # (out, in, k, k): one tile per (out, in)
        tiles = kernels.flatten(0, 1).unsqueeze(1)
        scale = max(1, 24 // tiles.shape[-1])  # 5x5 kernels drawn 20x20: visible in TensorBoard
        tiles = nn.functional.interpolate(tiles, scale_factor=scale, mode="nearest")
        per_row = kernels.shape[1] if kernels.shape[1] > 1 else 8  # a row per output channel
        grid = make_grid(_unit(tiles), nrow=per_row, pad_value=1)
        writer.add_image("kernels/first_conv", grid, step)
        seen = []
        handle = conv.register_forward_hook(lambda m, i, out: seen.append(out.detach()))
        try:
            was = model.training
            model.eval()
            model(data.prepare(data.test.x[:1]))
            model.train(was)
        finally:
            handle.remove()
        maps = seen[0][0].float().cpu().unsqueeze(1)  # (channels, 1, h, w)
        writer.add_image(
            "feature_maps/first_conv", make_grid(_unit(maps), nrow=8, pad_value=1), step
        )


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Each tile scaled to [0, 1] on its own (kernels and maps have any range)."""
    low = x.flatten(1).min(1).values.view(-1, 1, 1, 1)
    high = x.flatten(1).max(1).values.view(-1, 1, 1, 1)
    return (x - low) / (high - low).clamp_min(1e-12)


def show_feature_maps(writer, model: nn.Module, data, n: int, step: int, run_dir: Path) -> None:
    """The first n test images and every conv block's maps for them (a row per image, a column
    per channel, each map scaled to its own range), in TensorBoard and as PNG files."""
    from torchvision.utils import make_grid, save_image

    x = data.prepare(data.test.x[:n])
    with torch.no_grad():
        maps = model.feature_maps(x)
    for name, m in [("inputs", x), *((f"block{i}", m) for i, m in enumerate(maps, 1))]:
        tiles = m.detach().float().cpu().flatten(0, 1).unsqueeze(1)
        grid = make_grid(_unit(tiles), nrow=m.shape[1], pad_value=1.0)
        writer.add_image(f"test/feature_maps/{name}", grid, step)
        save_image(grid, run_dir / f"feature_maps_{name}.png")
