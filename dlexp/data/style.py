"""Content and style images for style transfer: files given by the user, or demo images that
the code draws (so the experiment runs with no file and nothing needs a licence)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dlexp.data.core import DataMeta, Raw, Split
from dlexp.errors import DlexpError


def demo_content(size: int = 256) -> np.ndarray:
    """A small landscape: sky gradient, a sun, two hills and a house. (H, W, 3) uint8."""
    h, w = size, int(size * 1.25)
    yy, xx = np.mgrid[0:h, 0:w] / size
    img = np.zeros((h, w, 3))
    img[..., 0], img[..., 1], img[..., 2] = 0.45 + 0.4 * yy, 0.65 + 0.3 * yy, 0.95 - 0.1 * yy
    sun = (xx - 0.95) ** 2 + (yy - 0.22) ** 2 < 0.012
    img[sun] = (1.0, 0.85, 0.3)
    for centre, height, colour in ((0.3, 0.62, (0.25, 0.55, 0.25)), (0.95, 0.7, (0.15, 0.42, 0.2))):
        hill = yy > height + 0.25 * (xx - centre) ** 2 * 4
        img[hill] = colour
    house = (xx > 0.45) & (xx < 0.7) & (yy > 0.5) & (yy < 0.75)
    img[house] = (0.75, 0.3, 0.2)
    roof = (yy > 0.38) & (yy <= 0.5) & (np.abs(xx - 0.575) < (yy - 0.38) * 1.3)
    img[roof] = (0.35, 0.15, 0.1)
    img[(xx > 0.54) & (xx < 0.61) & (yy > 0.62) & (yy < 0.75)] = (0.2, 0.12, 0.08)
    return (img.clip(0, 1) * 255).astype(np.uint8)


def demo_style(size: int = 256) -> np.ndarray:
    """Swirling coloured bands, a stand-in for a painting's brush strokes. (H, W, 3) uint8."""
    yy, xx = np.mgrid[0:size, 0:size] / size * 2 * np.pi
    angle = np.sin(3 * xx + 2 * np.sin(2 * yy)) + np.cos(4 * yy + np.sin(3 * xx))
    img = np.stack(
        [0.5 + 0.5 * np.sin(2 * angle), 0.5 + 0.5 * np.sin(2 * angle + 2.1), 0.5 + 0.5 * np.sin(2 * angle + 4.2)],
        axis=-1,
    )
    return (img * 255).astype(np.uint8)


MIN_SIDE = 32  # VGG's features of anything smaller are mostly padding


def _read(path: str, role: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    file = Path(path).expanduser()
    if not file.is_file():
        raise DlexpError(f"data.{role}={path}: there is no such file. Give the path of an image (PNG, JPEG, ...).")
    try:
        with Image.open(file) as img:
            pixels = np.array(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise DlexpError(f"data.{role}={path} is not an image that can be read ({err}).") from err
    if min(pixels.shape[:2]) < MIN_SIDE:
        raise DlexpError(
            f"data.{role}={path} is {pixels.shape[1]}x{pixels.shape[0]} pixels: too small to "
            f"carry a {role}. Use an image at least {MIN_SIDE} pixels on each side (it is "
            "resized to data.size, 256 by default)."
        )
    return pixels


def _resize(img: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    import torch.nn.functional as F

    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8)


def style_images(content: str | None = None, style: str | None = None, size: int = 256) -> Raw:
    """The content image with its shorter side at `size`, and the style image resized to the
    content's exact size. Training split: [content, style] (labels 0, 1)."""
    c = _read(content, "content") if content else demo_content(size)
    s = _read(style, "style") if style else demo_style(size)
    h, w = c.shape[:2]
    scale = size / min(h, w)
    hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = torch.stack([_resize(c, hw), _resize(s, hw)])
    meta = DataMeta("style_images", "image", (3, *hw), 0, ["content", "style"])
    return Raw(Split(x, torch.tensor([0, 1])), None, meta)
