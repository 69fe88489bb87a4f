"""Plain nn.Modules sized from the data's metadata; built with hydra's instantiate.

Five keys of a `model` config are not constructor arguments: `constant` (parameters set to a
value, by name pattern), `init_from` (start from the weights of another run, matched by name and
shape), `freeze` and `trainable` (parameter-name patterns to keep fixed, or the only ones to
train) and `freeze_epochs` (keep them fixed for the first epochs only).
"""

from __future__ import annotations

import logging
import re
from fnmatch import fnmatch
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dlexp.data import DataMeta
from dlexp.errors import DlexpError

log = logging.getLogger("dlexp")
NOT_ARGUMENTS = ("constant", "init_from", "freeze", "trainable", "freeze_epochs")


def build_model(
    cfg: DictConfig,
    meta: DataMeta,
    num_outputs: int | None,
    start_from: tuple[Path, dict[str, torch.Tensor]] | None = None,
) -> nn.Module:
    """Instantiate the `model` config for this data's input shape and `num_outputs` outputs;
    `start_from` is (checkpoint, its model's weights) for `model.init_from` (see load_run)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)  # (against the whole config: data.*)
    node = OmegaConf.create({k: v for k, v in resolved.items() if k not in NOT_ARGUMENTS})
    try:
        model = instantiate(node, input_shape=tuple(meta.input_shape), num_outputs=num_outputs)
    except Exception as err:  # (instantiate wraps what the constructor raised)
        cause = err.__cause__ or err
        if not isinstance(cause, MemoryError | RuntimeError) or "allocat" not in str(cause):
            raise
        size = re.search(r"allocate (\d+) bytes", str(cause))
        needs = f" ({int(size.group(1)) / 2**30:,.1f} GB for one of its tensors)" if size else ""
        settings = ", ".join(
            f"model.{k}={v}" for k, v in OmegaConf.to_container(node).items() if k != "_target_"
        )
        raise DlexpError(
            f"the model these settings describe does not fit in memory{needs}: {settings}. Use "
            "smaller layers (model.hidden, model.width, channels); nothing was trained."
        ) from None
    if cfg.get("constant"):
        set_constant(model, dict(cfg.constant))
    if start_from is not None:
        copy_matching(model, cfg.init_from, *start_from)
    if cfg.get("freeze") or cfg.get("trainable"):
        trainable = cfg.get("trainable")
        trainable = None if trainable is None else list(trainable)
        if cfg.get("freeze_epochs"):  # frozen by the trainer while epoch <= freeze_epochs
            if not isinstance(cfg.freeze_epochs, int) or cfg.freeze_epochs < 1:
                raise DlexpError(
                    f"model.freeze_epochs={cfg.freeze_epochs!r} is not valid: give the number of "
                    "epochs (a whole number >= 1) to keep the frozen layers fixed, or null."
                )
            names = frozen_names(model, list(cfg.get("freeze") or []), trainable)
            model.dlexp_frozen_until = (int(cfg.freeze_epochs), names)
        else:
            freeze(model, list(cfg.get("freeze") or []), trainable)
    elif cfg.get("freeze_epochs"):
        raise DlexpError(
            f"model.freeze_epochs={cfg.freeze_epochs} says how long to keep layers frozen, but "
            "no layer is: name them with model.freeze=[pattern] or model.trainable=[pattern] "
            "(e.g. model.trainable=[head.*] model.freeze_epochs=50)."
        )
    return model


def set_constant(model: nn.Module, values: dict[str, float]) -> None:
    """Set every parameter whose name matches a pattern to that value (the course's
    DUDL_weights_demoinits: one layer's weights at 0, or every parameter at 0 or 1)."""
    names = [n for n, _ in model.named_parameters()]
    for pattern, value in values.items():
        matched = [p for n, p in model.named_parameters() if fnmatch(n, pattern)]
        if not matched:
            raise DlexpError(
                f"model.constant pattern {pattern!r} matches no parameter; the names are "
                f"{', '.join(names)}"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DlexpError(
                f"model.constant: {pattern}={value!r} is not a number; give each pattern the "
                "value its parameters start at, e.g. model.constant={body.1.weight:0}."
            )
        with torch.no_grad():
            for p in matched:
                p.fill_(float(value))


def hold_frozen(model: nn.Module, epoch: int) -> None:
    """model.freeze_epochs: the frozen parameters train from epoch freeze_epochs + 1 on (the
    optimizer holds them throughout; one without a gradient is left alone). Their batch-norm
    statistics update all along, as in the course's DUDL_weights_freezeWeights."""
    until, names = getattr(model, "dlexp_frozen_until", (0, []))
    frozen = epoch <= until
    params = dict(model.named_parameters())
    if names and params[names[0]].requires_grad == frozen:
        for name in names:
            params[name].requires_grad_(not frozen)
        log.info(
            f"epoch {epoch}: {'froze' if frozen else 'released'} {len(names)} parameter tensors"
        )


def copy_matching(
    model: nn.Module, source: str, path: Path, theirs: dict[str, torch.Tensor]
) -> None:
    """Copy every tensor of `source`'s model whose name and shape match; say what was not."""
    ours = model.state_dict()
    copied, skipped = [], []
    for name, value in theirs.items():
        if name not in ours:
            skipped.append(f"{name} (not in this model)")
        elif ours[name].shape != value.shape:
            skipped.append(
                f"{name} (shape {tuple(value.shape)} there, {tuple(ours[name].shape)} here)"
            )
        else:
            ours[name] = value
            copied.append(name)
    if not copied:
        raise DlexpError(
            f"model.init_from={source}: no tensor of {path} matches this model by name and shape, "
            "so nothing could be copied. Use a run of a model with the same layers (e.g. an "
            "autoencoder's encoder for an MLP whose hidden sizes match it)."
        )
    model.load_state_dict(ours)
    fresh = [n for n in ours if n not in copied]
    log.info(f"init_from {path}: copied {len(copied)} tensors ({', '.join(copied)})")
    if skipped:
        log.info(f"  skipped {len(skipped)}: {'; '.join(skipped)}")
    if fresh:
        log.info(f"  newly initialised here: {', '.join(fresh)}")


def freeze(
    model: nn.Module, patterns: list[str], trainable: list[str] | None, keep_bn_stats: bool = True
) -> None:
    """Fix the parameters whose names match `patterns` (or all but those matching `trainable`).

    Frozen batch-norm layers also keep their running statistics (they always run as in
    evaluation, whatever mode the rest of the model is in) unless `keep_bn_stats` is false:
    then, as in the course's notebooks (requires_grad=False, net.train()), they still update.
    """
    frozen = set(frozen_names(model, patterns, trainable))
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if (
            keep_bn_stats
            and isinstance(module, nn.modules.batchnorm._BatchNorm)
            and params
            and not any(p.requires_grad for p in params)
        ):
            module.register_forward_pre_hook(_eval_mode)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info(f"trainable parameters: {total - frozen:,}; frozen: {frozen:,}")


def frozen_names(model: nn.Module, patterns: list[str], trainable: list[str] | None) -> list[str]:
    """The parameters that `patterns` freeze (or, with `trainable`, all those it does not name)."""
    names = [n for n, _ in model.named_parameters()]
    for pattern in [*patterns, *(trainable or [])]:
        if not any(fnmatch(n, pattern) for n in names):
            raise DlexpError(
                f"model.freeze/trainable pattern {pattern!r} matches no parameter; the names are "
                f"{', '.join(names)}"
            )
    if trainable is not None:
        return [n for n in names if not any(fnmatch(n, pat) for pat in trainable)]
    return [n for n in names if any(fnmatch(n, pat) for pat in patterns)]


def _eval_mode(module: nn.Module, inputs) -> None:
    module.training = False
