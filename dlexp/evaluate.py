"""`evaluate(run)`: rebuild a finished run's data and model and score its checkpoint on the test split."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dlexp.build import load_run, seed_everything
from dlexp.data import load_data
from dlexp.device import resolve_device
from dlexp.steps import ModuleStep
from dlexp.tasks import build_task
from dlexp.trainer import TrainerSettings

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
    trainer = TrainerSettings.of(cfg.trainer)
    trainer.compile = False
    step = ModuleStep(task, loaded.model, data, {}, None, "epoch", trainer, dev, cfg.seed)
    sums, outputs = step.evaluate("test", cfg.data.eval_batch_size, keep=True)
    flat = {k: v.reshape(-1) for k, v in (sums or {}).items()}
    test = {k: v[0] for k, v in task.summarize(flat, len(data.test)).items()} if flat else {}
    if outputs is not None:
        test.update(task.test_metrics(outputs[0], data.test.y))
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
