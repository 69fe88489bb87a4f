"""`evaluate(run)`: rebuild a finished run's data and model and score its checkpoint on the test split."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dlexp.data import load_data
from dlexp.run import load_run
from dlexp.tasks import build_task
from dlexp.train import resolve_device, seed_everything
from dlexp.trainer import Trainer

log = logging.getLogger("dlexp")


def evaluate(run: str | Path, which: str = "last", device: str = "auto") -> dict[str, Any]:
    """Test metrics of `run` (a run folder or checkpoint file), named like training's test/*."""
    loaded = load_run(run, which)
    cfg = loaded.cfg
    cfg.device.type = device
    seed_everything(cfg.seed)
    dev = resolve_device(cfg.device)
    data = load_data(cfg.data, cfg.seed).to(dev)
    task = build_task(cfg.task, data.meta, cfg.get("loss"))
    trainer = Trainer(cfg.trainer, dev, loaded.path.parent, cfg.seed, None, "")
    trainer.prepare(loaded.model)
    test, outputs = trainer.evaluate(
        task, loaded.model, data, data.test, cfg.data.eval_batch_size, keep=True
    )
    if outputs is not None:
        test.update(task.test_metrics(outputs, data.test.y))
    metrics = {f"test/{k}": v for k, v in test.items()}
    epoch = loaded.state["loop"]["epoch"]
    overall = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.count("/") == 1)
    log.info(f"{loaded.path} (epoch {epoch}): {overall}")
    classes = [k.split("/", 2)[2] for k in metrics if k.startswith("test/precision/")]
    if classes:  # the per-class table
        log.info(f"{'class':<20} {'precision':>9} {'recall':>9} {'f1':>9}")
        for name in classes:
            row = [metrics[f"test/{m}/{name}"] for m in ("precision", "recall", "f1")]
            log.info(f"{name:<20} " + " ".join(f"{v:>9.4f}" for v in row))
    return metrics
