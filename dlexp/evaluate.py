"""`evaluate(run)`: rebuild a finished run's data and model and score its checkpoint on the test split."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dlexp.checkpoint import find_checkpoint, load_checkpoint
from dlexp.errors import DlexpError
from dlexp.train import build, resolve_device, seed_everything
from dlexp.trainer import Trainer

log = logging.getLogger("dlexp")


def evaluate(run: str | Path, which: str = "last", device: str = "auto") -> dict[str, Any]:
    """Test metrics of `run` (a run folder or checkpoint file), named like training's test/*."""
    path = find_checkpoint(run, which)
    state = load_checkpoint(path)
    cfg = OmegaConf.create(state["config"])
    cfg.device.type = device
    cfg.model.init_from = None  # the checkpoint already holds every weight
    seed_everything(cfg.seed)
    dev = resolve_device(cfg.device)
    data, task, model = build(cfg, dev)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise DlexpError(f"{path} does not match the model its config describes: {err}") from err
    trainer = Trainer(cfg.trainer, dev, path.parent, cfg.seed, None, "")
    trainer.prepare(model)
    test, _ = trainer.evaluate(task, model, data, data.test, cfg.data.eval_batch_size)
    metrics = {f"test/{k}": v for k, v in test.items()}
    log.info(
        f"{path} (epoch {state['epoch']}): " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    )
    return metrics
