"""`sample(run)`: images from a trained GAN's generator, saved as one grid."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from dlexp.build import load_run
from dlexp.errors import DlexpError

log = logging.getLogger("dlexp")


def sample(run: str | Path, n: int = 64, out: str | Path = "samples.png", seed: int = 0) -> Path:
    """Draw `n` images (fixed `seed`) from the generator of `run` into the PNG grid `out`."""
    from torchvision.utils import save_image

    loaded = load_run(run)
    model = loaded.model
    if not hasattr(model, "sample"):
        raise DlexpError(
            f"{loaded.path} is not a GAN run; `dlexp sample` needs a run of model=gan or "
            "model=dcgan."
        )
    model.eval()
    with torch.inference_mode():
        images = (model.sample(n, torch.Generator().manual_seed(seed)) + 1) / 2
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.clamp(0, 1), out, nrow=math.ceil(math.sqrt(n)), pad_value=1.0)
    epoch = loaded.state["loop"]["epoch"]
    log.info(f"{n} samples from {loaded.path} (epoch {epoch}) written to {out}")
    return out
