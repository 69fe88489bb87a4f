"""Checks of a composed config that run before any work (and before a run folder is made)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from dlexp.errors import DlexpError

# (key, test, what would work) for the values that have a valid range.
_CHECKS = [
    ("seed", lambda v: isinstance(v, int), "an integer, e.g. seed=1"),
    (
        "trainer.epochs",
        lambda v: isinstance(v, int) and v >= 1,
        "a whole number >= 1, e.g. trainer.epochs=5",
    ),
    (
        "data.batch_size",
        lambda v: isinstance(v, int) and v >= 1,
        "a whole number >= 1, e.g. data.batch_size=32",
    ),
    ("data.eval_batch_size", lambda v: isinstance(v, int) and v >= 1, "a whole number >= 1"),
    (
        "optimizer.lr",
        lambda v: isinstance(v, int | float) and v > 0,
        "a positive number, e.g. optimizer.lr=0.001",
    ),
    (
        "trainer.precision",
        lambda v: v in ("auto", "fp32", "bf16", "fp16"),
        "auto, fp32, bf16 or fp16",
    ),
    ("trainer.progress", lambda v: v in ("auto", "bar", "log", "none"), "auto, bar, log or none"),
    (
        "device.type",
        lambda v: v in ("auto", "cpu", "cuda", "mps") or str(v).startswith("cuda:"),
        "auto, cpu, cuda (or cuda:N) or mps",
    ),
]


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
    for key, ok, hint in _CHECKS:
        value = OmegaConf.select(cfg, key)
        if value is not None and not (ok(value) and not isinstance(value, bool)):
            raise DlexpError(f"{key}={value!r} is not valid: it must be {hint}.")
