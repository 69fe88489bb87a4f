"""`sample(run)`: images from a trained GAN's generator, saved as one grid."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf

from dlexp.checkpoint import find_checkpoint, load_checkpoint
from dlexp.data import DataMeta
from dlexp.errors import DlexpError
from dlexp.models import build_model

log = logging.getLogger("dlexp")


def sample(run: str | Path, n: int = 64, out: str | Path = "samples.png", seed: int = 0) -> Path:
    """Draw `n` images (fixed `seed`) from the generator of `run` into the PNG grid `out`."""
    from torchvision.utils import save_image

    path = find_checkpoint(run)
    state = load_checkpoint(path)
    cfg = OmegaConf.create(state["config"])
    if cfg.get("task", {}).get("name") != "adversarial" or "meta" not in state:
        raise DlexpError(
            f"{path} is not a GAN run; `dlexp sample` needs a run of model=gan or model=dcgan."
        )
    meta = DataMeta(**state["meta"])
    meta.input_shape = tuple(meta.input_shape)
    model = build_model(
        OmegaConf.masked_copy(cfg.model, [k for k in cfg.model if k != "init_from"]), meta, None
    )
    model.load_state_dict(state["model"])
    model.eval()
    with torch.inference_mode():
        images = (model.sample(n, torch.Generator().manual_seed(seed)) + 1) / 2
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.clamp(0, 1), out, nrow=math.ceil(math.sqrt(n)), pad_value=1.0)
    log.info(f"{n} samples from {path} (epoch {state['epoch']}) written to {out}")
    return out
