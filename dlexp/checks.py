"""Checks of a composed config that run before any work (and before a run folder is made).

Every value is checked against what reads it, as its annotation states it (dlexp.settings):
the nodes built with `_target_` (model, task, optimizer, ...) against their classes'
signatures, dlexp's own groups (trainer, data, device, the run's top-level keys) against their
settings dataclasses. A wrong value is refused with the key, the value and what would work,
never trained on.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import logging
import math
import os
import types
import typing
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from dlexp.errors import DlexpError

# Keys dlexp reads outside the groups' files (so absent from them, yet not typos).
OPTIONAL_KEYS = {"requires", "objective", "threads"}


def check_config(cfg: DictConfig, settings: dict[str, type]) -> None:
    """Refuse missing, out-of-range or mistyped values before any work starts: the nodes built
    with `_target_` against their classes' signatures, and dlexp's own groups against the
    `settings` classes that state them (prefix -> dataclass; "" for top-level keys)."""
    # ??? values, and the keys an experiment lists under `requires` (a ??? cannot replace a
    # value the model config already set, so experiments name their required keys there).
    missing = sorted(OmegaConf.missing_keys(cfg))
    missing += [k for k in cfg.get("requires") or [] if OmegaConf.select(cfg, k) in (None, "")]
    if missing:
        raise DlexpError(
            f"{', '.join(missing)} must be given for this config, e.g. dlexp train ... "
            f"{missing[0]}=<value> (for model.init_from: a run folder or checkpoint file)."
        )
    for prefix, cls in settings.items():
        node = cfg if not prefix else OmegaConf.select(cfg, prefix)
        if isinstance(node, DictConfig):
            _check_settings(cls, node, prefix)
    check_targets(cfg)


def _check_settings(cls: type, node: DictConfig, prefix: str) -> None:
    """Each field of the dataclass `cls` that the node has, of the type (and in the range)
    its annotation states; every field is there where `cls.required` says the code reads all
    (a key removed with ~key would fail later)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    values = OmegaConf.to_container(node, resolve=True)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name not in node:
            if getattr(cls, "required", False):
                raise DlexpError(
                    f"{key} was removed (~{key}?), but dlexp reads it: give it a value "
                    f"instead ({key}=...; `dlexp train --cfg job` shows its default)."
                )
            continue
        expected = hints[f.name]
        if dataclasses.is_dataclass(expected):
            _check_settings(expected, node[f.name], key)
            continue
        value = values[f.name]
        if not _fits(value, expected):
            raise DlexpError(
                f"{key}={value!r} is not valid: it must be {_describe(expected)}, e.g. "
                f"{key}={_example(expected)}."
            )


# Config nodes built with instantiate, and their keys that are not constructor arguments.
TARGETS = {
    "model": (),  # dlexp.models.NOT_ARGUMENTS, read where used (importing it imports torch)
    "task": (),
    "optimizer": ("fused",),
    "optimizer_d": ("fused",),
    "scheduler": ("interval",),
    "loss": (),
    "data.source": (),
}


# What a config may build (`_target_`), by the module that defines it: dlexp's models, tasks,
# data loaders and losses, torch's optimizers, schedulers, layers and losses, torchvision's
# models. A config is data: a file (a checkpoint's stored config, an experiment from anywhere)
# that names anything else, os.system or torch.load say, is refused before anything is built.
BUILDABLE = (
    "dlexp.models.",
    "dlexp.tasks.",
    "dlexp.data.tabular",  # (the loaders, not the cache or the splitting)
    "dlexp.data.images",
    "dlexp.data.files",
    "dlexp.data.style",
    "dlexp.data.sequences",
    "dlexp.losses",
    "torch.optim.",
    "torch.nn.",
    "torchvision.models.",
)


def own_modules() -> list[str]:
    """The user's own modules that configs may build from (their models, losses, ...), named
    in the DLEXP_MODULES environment variable (comma- or colon-separated): the user's shell
    says so, never a config, which is data."""
    named = os.environ.get("DLEXP_MODULES", "").replace(",", ":").split(":")
    return [m.strip() for m in named if m.strip()]


def _buildable(module: str) -> bool:
    own = own_modules()
    return module.startswith(BUILDABLE) or any(
        module == m or module.startswith(m + ".") for m in own
    )


def locate(path: str) -> Any:
    """The object a `_target_` names (hydra's get_object, without the error line it logs
    before raising: the caller says what went wrong)."""
    from hydra.utils import get_object

    logger = logging.getLogger("hydra.utils")
    was, logger.disabled = logger.disabled, True
    try:
        return get_object(path)
    finally:
        logger.disabled = was


def check_buildable(node: Any, where: str = "") -> None:
    """Every `_target_` in the config, at any depth, names something dlexp may build."""
    if isinstance(node, DictConfig | ListConfig):
        items = node.items() if isinstance(node, DictConfig) else enumerate(node)
        for key, value in items:
            if key != "_target_":
                check_buildable(value, f"{where}.{key}" if where else str(key))
        if not isinstance(node, DictConfig) or "_target_" not in node:
            return
        target, found = node._target_, None
        if target is None:  # (a node that builds nothing: scheduler=none)
            return
        if isinstance(target, str) and _buildable(target):
            try:
                found = locate(target)
            except Exception as err:
                if not target.startswith(BUILDABLE):  # the user's own module: say why
                    raise DlexpError(
                        f"{where}._target_={target!r} cannot be imported ({err.__cause__ or err}). "
                        "Run dlexp from "
                        "the folder that holds the module, or install its package (pip install "
                        "-e <folder>), so that Python finds it."
                    ) from None
        module = getattr(found, "__module__", None) or ""
        if not _buildable(module):  # (the object itself, not an alias in a module)
            raise DlexpError(
                f"{where}._target_={target!r} is not something dlexp builds: a config may name "
                "dlexp's models, tasks, data loaders and losses, torch.optim's optimizers and "
                "schedulers, torch.nn's layers and losses, or torchvision's models (e.g. "
                "torch.optim.Adam). For your own code, name its module in the DLEXP_MODULES "
                "environment variable (export DLEXP_MODULES=my_models): a config cannot allow "
                "code by itself. Nothing was built or run."
            )


def check_targets(cfg: DictConfig) -> None:
    """Every key of a node built with `_target_` must be an argument of that class, of the
    type the class declares: `model.hidden=abc` names the key and what it expects."""
    check_buildable(cfg)
    from dlexp.models import NOT_ARGUMENTS

    for prefix, not_arguments in {**TARGETS, "model": NOT_ARGUMENTS}.items():
        node = OmegaConf.select(cfg, prefix)
        if not isinstance(node, DictConfig) or node.get("_target_") is None:
            continue  # not built, or off (scheduler=none)
        try:
            target = locate(node._target_)
        except Exception as err:
            raise DlexpError(
                f"{prefix}._target_={node._target_!r} cannot be imported ({err}); give the dotted "
                "path of a class, e.g. torch.optim.Adam."
            ) from err
        values = OmegaConf.to_container(node, resolve=True)
        if prefix == "model":
            _check_model_contract(target, node._target_)
        _check_arguments(target, values, prefix, not_arguments)


def _check_model_contract(target: Any, name: str) -> None:
    """A model is built as target(input_shape=..., num_outputs=..., **settings)."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    lacking = [a for a in ("input_shape", "num_outputs") if a not in params and not takes_any]
    if lacking:
        raise DlexpError(
            f"model._target_={name!r} cannot be a dlexp model: dlexp builds the model as "
            f"{name.rsplit('.', 1)[-1]}(input_shape=<one sample's shape, e.g. (1, 28, 28)>, "
            "num_outputs=<classes or targets>, **<the model config's other keys>), and it takes "
            f"no {' or '.join(lacking)}. Wrap it in a torch.nn.Module whose __init__ takes "
            "input_shape and num_outputs (README: Your own model; examples/own_model)."
        )


def _check_arguments(target: Any, values: dict, prefix: str, skip: tuple[str, ...]) -> None:
    try:
        params = inspect.signature(target).parameters
        hints = typing.get_type_hints(
            target.__init__ if inspect.isclass(target) else target, include_extras=True
        )
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
    """Whether a config value can be what a type hint declares (and, for an Annotated one,
    what its dlexp.settings metadata accepts)."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin is typing.Annotated:
        conditions = [m for m in expected.__metadata__ if hasattr(m, "ok")]
        return _fits(value, args[0]) and all(m.ok(value) for m in conditions)
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
    if origin is typing.Annotated:
        said = [m.says for m in expected.__metadata__ if getattr(m, "says", "")]
        return said[0] if said else _describe(args[0])
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and len(args) == 2:  # Optional: null turns it off
            inner = next(a for a in args if a is not type(None))
            return f"{_describe(inner)}, or null to turn it off"
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
    if origin is typing.Annotated:
        names = [m.values[0] for m in expected.__metadata__ if hasattr(m, "values")]
        ranges = [m for m in expected.__metadata__ if hasattr(m, "low")]
        if names:
            return names[0]
        if ranges:  # a value well inside the range
            r, integer = ranges[0], args[0] is int
            if integer and math.isfinite(r.low):
                return str(int(r.low) + int(r.open_low))
            if math.isfinite(r.low) and math.isfinite(r.high):
                return f"{(r.low + r.high) / 2:g}"
            if math.isfinite(r.low):
                return "0.01" if r.low == 0 and r.open_low else f"{r.low + int(r.open_low):g}"
        return _example(args[0])
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
