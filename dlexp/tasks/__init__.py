"""What one training step means: the loss, the metrics and the task's TensorBoard extras.

A task turns model outputs into a loss and into metric *sums* (tensors that stay on the
device); the trainer adds the sums over an epoch and asks the task to turn them into numbers
once per epoch, so there is no host sync per step.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from dlexp.data import DataMeta
from dlexp.errors import DlexpError
from dlexp.tasks.adversarial import Adversarial
from dlexp.tasks.base import Task
from dlexp.tasks.classification import Classification
from dlexp.tasks.reconstruction import Reconstruction
from dlexp.tasks.regression import Regression
from dlexp.tasks.stylize import Stylize

TASKS = ("auto", "classification", "regression", "reconstruct", "adversarial", "stylize")


def build_task(
    cfg: DictConfig, data_task: str, meta: DataMeta, loss_cfg: DictConfig | None
) -> Task:
    """The task named by `task.name`; `auto` follows the data (classification or regression)."""
    loss = instantiate(loss_cfg) if loss_cfg else None
    options = {k: v for k, v in cfg.items() if k != "name"}
    name = data_task if cfg.name == "auto" else cfg.name
    if name == "classification":
        if meta.num_classes < 2:
            raise DlexpError(
                f"data={meta.name} has no classes, so it cannot be a classification task; "
                "use data.task=regression."
            )
        return Classification(meta.num_classes, meta.class_names, loss)
    if name == "regression":
        return Regression(loss)
    if name == "reconstruct":
        return Reconstruction(loss, **options)
    if name == "adversarial":
        return Adversarial(**options)
    if name == "stylize":
        return Stylize(**options)
    raise DlexpError(f"task.name={name!r} is not known; use one of {', '.join(TASKS)}.")
