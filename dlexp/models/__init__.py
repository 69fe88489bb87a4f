"""Plain nn.Modules sized from the data's metadata; built with hydra's instantiate."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from dlexp.data import DataMeta


def build_model(cfg: DictConfig, meta: DataMeta, num_outputs: int) -> nn.Module:
    """Instantiate the `model` config for this data's input shape and `num_outputs` outputs."""
    return instantiate(cfg, input_shape=tuple(meta.input_shape), num_outputs=num_outputs)
