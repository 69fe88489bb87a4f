"""What one training step means: the loss, the metrics and the task's TensorBoard extras.

A task turns model outputs into a loss and into metric *sums* (tensors that stay on the
device); the trainer adds the sums over an epoch and asks the task to turn them into numbers
once per epoch, so there is no host sync per step. Tasks are chosen by Hydra (`configs/task/`)
and built with `instantiate`, given the data's metadata and the `loss` config.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from dlexp.data import DataMeta
from dlexp.tasks.base import Task


def build_task(cfg: DictConfig, meta: DataMeta, loss_cfg: DictConfig | None) -> Task:
    """The `task` config's class, for this data (`meta`) and loss (None: the task's default)."""
    loss = instantiate(loss_cfg) if loss_cfg else None
    return instantiate(cfg, meta=meta, loss=loss)
