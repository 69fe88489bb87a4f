"""Checks of a composed config that run before any work (and before a run folder is made).

Every key dlexp itself reads and that has a valid range or set of values is listed in RULES,
so a wrong value is refused with the key, the value and what would work, never trained on.
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dlexp.errors import DlexpError


@dataclass(frozen=True)
class Rule:
    test: Callable[[Any], bool]
    hint: str  # what would work
    optional: bool = False  # null is allowed (the feature is off)


def _int(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _num(low: float, high: float = float("inf"), open_low: bool = False, open_high: bool = False):
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        above = v > low if open_low else v >= low
        below = v < high if open_high else v <= high
        return above and below

    return ok


def _one_of(*values: str) -> Callable[[Any], bool]:
    return lambda v: v in values


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


BOOLEAN_KEYS = (
    "trainer.compile",
    "trainer.deterministic",
    "trainer.channels_last",
    "trainer.checkpoint",
    "trainer.eval_before",
    "trainer.test_every_epoch",
    "trainer.log_weights",
    "trainer.overwrite",
    "data.download",
    "data.cache",
    "data.standardize",
    "data.augment.hflip",
    "data.roll_train",
    "model.batch_norm",
    "model.head_batch_norm",
    "model.freeze_backbone",
    "model.frozen_bn_stats",
    "sweep.resume",
)
RULES: dict[str, Rule] = {
    "seed": Rule(_int(0), "a whole number >= 0, e.g. seed=1"),
    "trainer.epochs": Rule(_int(1), "a whole number >= 1, e.g. trainer.epochs=5"),
    "trainer.devices": Rule(_int(1), "a whole number >= 1 (processes), e.g. trainer.devices=2"),
    "trainer.grad_clip": Rule(
        _num(0, open_low=True), "a positive number (the largest gradient norm), e.g. 1.0", True
    ),
    "trainer.l1": Rule(_num(0), "a number >= 0 (0 turns the L1 penalty off), e.g. 0.001"),
    "trainer.log_every_steps": Rule(_int(1), "a whole number >= 1, e.g. 50"),
    "trainer.log_every_epochs": Rule(_int(1), "a whole number >= 1, e.g. 1"),
    "trainer.max_steps_per_epoch": Rule(_int(1), "a whole number >= 1, or null for all", True),
    "trainer.checkpoint_interval": Rule(_num(0), "a number of seconds >= 0 (0: every epoch)"),
    "trainer.checkpoint_every_steps": Rule(_int(1), "a whole number >= 1, or null", True),
    "trainer.checkpoint_every_minutes": Rule(
        _num(0, open_low=True), "a positive number of minutes, or null", True
    ),
    "trainer.early_stopping.patience": Rule(
        _int(1), "a whole number of epochs >= 1, or null for no early stopping", True
    ),
    "trainer.early_stopping.min_delta": Rule(_num(0), "a number >= 0, e.g. 0.001"),
    "trainer.precision": Rule(
        _one_of("auto", "fast", "fp32", "bf16", "fp16"), "auto, fast, fp32, bf16 or fp16"
    ),
    "trainer.progress": Rule(_one_of("auto", "bar", "log", "none"), "auto, bar, log or none"),
    "data.batch_size": Rule(_int(1), "a whole number >= 1, e.g. data.batch_size=32"),
    "data.eval_batch_size": Rule(_int(1), "a whole number >= 1, e.g. 1024"),
    "data.val_fraction": Rule(
        _num(0, 1, open_high=True),
        "the fraction of samples held out: at least 0 and below 1, e.g. 0.1",
    ),
    "data.test_fraction": Rule(
        _num(0, 1, open_high=True),
        "the fraction of samples held out: at least 0 and below 1, e.g. 0.2",
    ),
    "trainer.report_every_epochs": Rule(_int(1), "a whole number of epochs >= 1, or null", True),
    "data.balance": Rule(
        _one_of("none", "oversample", "undersample", "smote", "class_weight"),
        "none, oversample, undersample, smote or class_weight",
    ),
    "data.folds": Rule(_int(2), "a whole number of folds >= 2, or null for none", True),
    "data.fold": Rule(_int(0), "a fold number from 0 to data.folds - 1, e.g. data.fold=0"),
    "data.subset": Rule(_int(1), "a whole number of samples >= 1, or null for all", True),
    "data.repeat": Rule(_int(1), "a whole number >= 1, or null", True),
    "data.resize": Rule(_int(4), "a size in pixels >= 4, e.g. 64, or null", True),
    "data.roll": Rule(_int(0), "a whole number of pixels >= 0, e.g. 10"),
    "data.normalize": Rule(_one_of("standard", "unit", "symmetric"), "standard, unit or symmetric"),
    "data.augment.shift": Rule(_int(0), "a whole number of pixels >= 0"),
    "data.augment.noise": Rule(_num(0), "a number >= 0 (the noise's std)"),
    "data.augment.rotate": Rule(_num(0, 180), "a number of degrees from 0 to 180, e.g. 15"),
    "data.augment.scale": Rule(
        _num(0, 1, open_high=True), "a fraction from 0 to below 1, e.g. 0.1"
    ),
    "data.augment.color": Rule(_num(0, 1), "a fraction from 0 to 1, e.g. 0.2"),
    "data.features": Rule(
        lambda v: (
            not isinstance(v, str | dict)
            and hasattr(v, "__iter__")
            and all(f in ("square", "log", "products", "radius") for f in v)
        ),
        "a list of square, log, products, radius, e.g. data.features=[radius]",
    ),
    "optimizer.lr": Rule(_num(0, open_low=True), "a positive number, e.g. optimizer.lr=0.001"),
    "optimizer_d.lr": Rule(_num(0, open_low=True), "a positive number, e.g. 0.0002"),
    "optimizer.weight_decay": Rule(_num(0), "a number >= 0, e.g. 0.01"),
    "optimizer.momentum": Rule(_num(0, 1, open_high=True), "a number in [0, 1), e.g. 0.9"),
    "model.dropout": Rule(_num(0, 1, open_high=True), "a probability in [0, 1), e.g. 0.2"),
    "model.conv_dropout": Rule(_num(0, 1, open_high=True), "a probability in [0, 1), e.g. 0.1"),
    "model.init_std": Rule(_num(0, open_low=True), "a positive number, e.g. 0.01"),
    "model.width": Rule(_int(1), "a whole number of units >= 1, or null", True),
    "model.depth": Rule(_int(1), "a whole number of layers >= 1, or null", True),
    "model.latent": Rule(_int(1), "a whole number of units >= 1"),
    "task.noise": Rule(_num(0), "a number >= 0 (the noise's std), e.g. 0.25"),
    "task.occlusion": Rule(_int(0), "a whole number of pixels >= 0, e.g. 3"),
    "model.tied": Rule(
        lambda v: isinstance(v, bool) or v in ("latent", "all"),
        "false, latent (the latent layer and its mirror share a matrix) or all (true)",
    ),
    "task.noise_kind": Rule(_one_of("gaussian", "uniform"), "gaussian or uniform"),
    "task.corrupt": Rule(_one_of("both", "test"), "both or test"),
    "task.show": Rule(_int(1), "a whole number of images >= 1, e.g. 8"),
    "task.quality_samples": Rule(_int(2), "a whole number of samples >= 2, e.g. 500"),
    "task.style_scale": Rule(_num(0, open_low=True), "a positive number, e.g. 1e6"),
    "task.out_size": Rule(_int(1), "a size in pixels >= 1, or null", True),
    **{key: Rule(_bool, "true or false") for key in BOOLEAN_KEYS},
    "device.type": Rule(
        lambda v: v in ("auto", "cpu", "cuda", "mps") or str(v).startswith("cuda:"),
        "auto, cpu, cuda (or cuda:N) or mps",
    ),
}

_ABSENT = object()
# Keys dlexp reads outside the groups' files (so absent from them, yet not typos).
OPTIONAL_KEYS = {"requires", "objective", "threads"}


def check_config(cfg: DictConfig) -> None:
    """Refuse missing, out-of-range or mistyped values before any work starts."""
    # ??? values, and the keys an experiment lists under `requires` (a ??? cannot replace a
    # value the model config already set, so experiments name their required keys there).
    missing = sorted(OmegaConf.missing_keys(cfg))
    missing += [k for k in cfg.get("requires") or [] if OmegaConf.select(cfg, k) in (None, "")]
    if missing:
        raise DlexpError(
            f"{', '.join(missing)} must be given for this config, e.g. dlexp train ... "
            f"{missing[0]}=<value> (for model.init_from: a run folder or checkpoint file)."
        )
    for key, rule in RULES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT and key.startswith("trainer.") and "trainer" in cfg:
            raise DlexpError(
                f"{key} was removed (~{key}?), but the trainer reads it: give it a value "
                f"instead ({key}=...; `dlexp train --cfg job` shows its default)."
            )
        if value is _ABSENT or (value is None and rule.optional):
            continue  # a key this config does not have, or null where null means "off"
        if not rule.test(value):
            off = " (or null to turn it off)" if rule.optional and "null" not in rule.hint else ""
            raise DlexpError(f"{key}={value!r} is not valid: it must be {rule.hint}{off}.")
    check_targets(cfg)


# Config nodes built with instantiate, and their keys that are not constructor arguments.
TARGETS = {
    "model": ("init_from", "freeze", "trainable"),
    "task": (),
    "optimizer": ("fused",),
    "optimizer_d": ("fused",),
    "scheduler": ("interval",),
    "loss": (),
    "data.source": (),
}


def check_targets(cfg: DictConfig) -> None:
    """Every key of a node built with `_target_` must be an argument of that class, of the
    type the class declares: `model.hidden=abc` names the key and what it expects."""
    from hydra.utils import get_object

    for prefix, not_arguments in TARGETS.items():
        node = OmegaConf.select(cfg, prefix)
        if not isinstance(node, DictConfig) or node.get("_target_") is None:
            continue  # not built, or off (scheduler=none)
        try:
            target = get_object(node._target_)
        except Exception as err:
            raise DlexpError(
                f"{prefix}._target_={node._target_!r} cannot be imported ({err}); give the dotted "
                "path of a class, e.g. torch.optim.Adam."
            ) from err
        values = OmegaConf.to_container(node, resolve=True)
        _check_arguments(target, values, prefix, not_arguments)


def _check_arguments(target: Any, values: dict, prefix: str, skip: tuple[str, ...]) -> None:
    try:
        params = inspect.signature(target).parameters
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except (TypeError, ValueError, NameError):
        return  # no signature to check against
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        params = {}  # takes any keyword: nothing to check names against
    given = [k for k in values if not k.startswith("_") and k not in skip]
    for key in given:
        if params and key not in params:
            names = [n for n in params if n not in ("self", "input_shape", "num_outputs", "params")]
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f"did you mean {prefix}.{close[0]}? " if close else ""
            raise DlexpError(
                f"{prefix}.{key} is not a setting of {target.__name__}; {hint}its settings are "
                f"{', '.join(names)}."
            )
        expected = hints.get(key)
        if expected is not None and not _fits(values[key], expected):
            raise DlexpError(
                f"{prefix}.{key}={values[key]!r} is not valid: {target.__name__} expects "
                f"{_describe(expected)} there (e.g. {prefix}.{key}={_example(expected)})."
            )


def _fits(value: Any, expected: Any) -> bool:
    """Whether a config value can be what a constructor's type hint declares."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or expected in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        inner = [a for a in args if a is not Ellipsis]
        return len(inner) != 1 or all(_fits(v, inner[0]) for v in value)
    return True  # a type the config cannot express: let the class decide


def _describe(expected: Any) -> str:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if expected is type(None):
        return "null"
    if origin in (list, tuple, collections.abc.Sequence):
        inner = [a for a in args if a is not Ellipsis]
        return f"a list ({_describe(inner[0])} each)" if len(inner) == 1 else "a list"
    names = {int: "a whole number", float: "a number", str: "a name", bool: "true or false"}
    return names.get(expected, getattr(expected, "__name__", str(expected)))


def _example(expected: Any) -> str:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return _example(next(a for a in args if a is not type(None)))
    if origin in (list, tuple, collections.abc.Sequence):
        inner = [a for a in args if a is not Ellipsis] or [int]
        return "[" + ",".join(_example(a) for a in (inner * 2)[: max(2, len(inner))]) + "]"
    return {int: "64", float: "0.5", str: "relu", bool: "true"}.get(expected, "...")


def check_known_keys(cfg: DictConfig, added: list[str], groups: tuple[str, ...]) -> None:
    """Refuse keys added under dlexp's own groups (`+trainer.epoch=3`) that no code reads,
    naming the closest real key (one of `cfg`'s keys that was not added)."""
    fresh = [k for k in added if k.split(".")[0] in groups and k not in OPTIONAL_KEYS]
    if not fresh:
        return
    known = [k for k in config_keys(cfg) if not any(k == a or k.startswith(a + ".") for a in added)]
    key = fresh[0]
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    raise DlexpError(
        f"{key} is not a setting dlexp knows, so it would do nothing; {hint}"
        f"`dlexp train --cfg job` lists every key of this config."
    )


def config_keys(node: Any, prefix: str = "") -> list[str]:
    """Every leaf key of a config, dotted (without resolving interpolations)."""
    if isinstance(node, DictConfig) and len(node):
        return [k for key in node for k in config_keys(node._get_node(key), f"{prefix}{key}.")]
    return [prefix[:-1]]
