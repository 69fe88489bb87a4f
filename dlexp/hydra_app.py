"""`dlexp train` under Hydra: the job function, reworded config errors, shell completion.

Hydra composes the config (one run, or a sweep's jobs) and calls `hydra_job(cfg)`, which is
`train(cfg)` plus what a command line needs: one paragraph and exit status 2 for a user's
mistake, a failed sweep job recorded without stopping the sweep, the sweep's objective.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

from hydra.types import RunMode
from omegaconf import DictConfig

from dlexp.errors import DlexpError
from dlexp.run import IN_HYDRA_JOB, hydra_record, in_sweep, objective, shell_override, status_of

log = logging.getLogger("dlexp")


def check_output_root(args: list[str]) -> None:
    """Refuse an output folder that cannot be written before Hydra tries to create runs in it."""
    root = os.environ.get("DLEXP_OUTPUTS", "outputs")
    for arg in args:
        key, _, value = arg.partition("=")
        if key in ("out_root", "hydra.run.dir", "hydra.sweep.dir"):
            root = value
    path = Path(root).expanduser()
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        raise DlexpError(
            f"cannot write runs under {path}: {existing} is not a writable folder. Point "
            "DLEXP_OUTPUTS (or out_root=) at a folder you can write to."
        )


MAX_JOBS = 100_000  # a sweep's jobs are composed and kept in memory before the first starts


def check_grid_size(args: list[str]) -> None:
    """Refuse a command-line grid of more than MAX_JOBS jobs before anything is composed (Hydra
    would compose and keep every job first, silently, for minutes), and an interval that the
    basic sweeper cannot read."""
    if not {"-m", "--multirun"} & set(args):
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    total = 1
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a])
    except Exception:  # (Hydra says what it cannot read)
        return
    searching = any(a.startswith(("hydra/sweeper=", "experiment=")) for a in args)
    for override in overrides:
        sweep = override.value() if override.is_sweep_override() else None
        if isinstance(sweep, IntervalSweep) and not searching:  # (the basic sweeper's default)
            raise DlexpError(
                f"{override.input_line}: an interval is a range to search, which only a "
                "searching sweeper reads: add hydra/sweeper=optuna (pip install "
                f"'dlexp[optuna]'), or give values ({override.key_or_group}=0.001,0.01,0.1)."
            )
        if isinstance(sweep, RangeSweep) and sweep.step:
            total *= max(0, -(-(sweep.stop - sweep.start) // sweep.step))
        elif isinstance(sweep, ChoiceSweep):
            total *= len(sweep.list)
    if total > MAX_JOBS:
        raise DlexpError(
            f"this sweep has {total:,} jobs, more than dlexp runs in one sweep ({MAX_JOBS:,}): "
            "nothing was composed or started. Sweep fewer values, or split the grid into "
            "several sweeps."
        )


def resume_sweep_args(args: list[str]) -> list[str]:
    """`-m ... sweep.resume=true`: reuse the latest sweep folder made by the same command."""
    if "sweep.resume=true" not in args or not ({"-m", "--multirun"} & set(args)):
        return args
    import yaml

    wanted = sorted(  # the job overrides (hydra's own, e.g. hydra/launcher=..., are apart)
        a for a in args if not a.startswith(("-", "hydra.", "hydra/")) and a != "sweep.resume=true"
    )
    root = Path(os.environ.get("DLEXP_OUTPUTS", "outputs")) / "sweeps"
    for sweep in sorted(root.glob("*"), reverse=True):
        multirun = sweep / "multirun.yaml"
        if multirun.is_file():
            task = yaml.safe_load(multirun.read_text())["hydra"]["overrides"]["task"]
            if sorted(a for a in task if a != "sweep.resume=true") == wanted:
                print(f"dlexp: resuming the sweep in {sweep}")
                return [*args, f"hydra.sweep.dir={sweep}"]
    print("dlexp: no earlier sweep with these overrides; starting a new one")
    return args


class _HeldStderr:
    """Hydra prints a failed composition to stderr and exits 1. dlexp holds stderr back until
    the config is composed (Hydra's on_run_start / on_multirun_start callbacks release it), so
    that a mistyped key becomes one dlexp paragraph naming the real key instead."""

    real: ClassVar[Any] = None
    held: ClassVar[list[str]] = []

    def write(self, text: str) -> int:
        self.held.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    @classmethod
    def start(cls) -> None:
        cls.real, cls.held = sys.stderr, []
        sys.stderr = cls()

    @classmethod
    def release(cls) -> str:
        if cls.real is not None:
            sys.stderr, cls.real = cls.real, None
        text, cls.held = "".join(cls.held), []
        return text


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object


class Composed(Callback):
    """Hydra callback: the config is composed, so stderr goes back to the terminal."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        sys.stderr.write(_HeldStderr.release())

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sys.stderr.write(_HeldStderr.release())


class SweepProgress(Callback):
    """Hydra callback: "sweep job k of N" and the time left, as each job of a sweep starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.total, self.start = _sweep_size(config), time.monotonic()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        total = getattr(self, "total", None)  # unset in a launcher's worker processes
        if total is None or config.hydra.mode != RunMode.MULTIRUN:
            return
        done = config.hydra.job.num
        left = ""
        if done:
            seconds = (time.monotonic() - self.start) / done * (total - done)
            left = (
                f", about {seconds:.0f} s left"
                if seconds < 120
                else f", {seconds / 60:.0f} min left"
            )
        print(f"dlexp: sweep job {done + 1} of {total}{left}", file=sys.stderr, flush=True)


def _sweep_size(config: DictConfig) -> int | None:
    """How many jobs a sweep has: Optuna's n_trials, or the product of the swept values."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.sweeper
    if "n_trials" in sweeper:
        return int(sweeper.n_trials)
    try:
        parser = OverridesParser.create()
        swept = {k: f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()}
        for text in config.hydra.overrides.task:  # the command line replaces an experiment's
            swept[text.partition("=")[0]] = text
        total = 1
        for override in parser.parse_overrides(list(swept.values())):
            if override.is_sweep_override():
                total *= len(list(override.sweep_iterator()))
        return total
    except Exception:  # glob() and other sweeps that need the config loader: no count
        return None


def composition_error(text: str, args: list[str], config_path: str) -> str:
    """Hydra's message for a failed composition, or dlexp's for a key that does not exist."""
    if "No space left on device" in text:
        return (
            "dlexp: error: the disk is full: Hydra could not create the run folder or its "
            "files. Free some space, or put runs on another disk (DLEXP_OUTPUTS=<folder>).\n"
        )
    if "Config group override must be a string or a list. Got NoneType" in text:
        groups = [a.partition("=")[0] for a in args if a.partition("=")[2] == "null"]
        group = next((g for g in groups if (Path(config_path) / g).is_dir()), "the group")
        options = sorted(p.stem for p in (Path(config_path) / group).glob("*.yaml"))
        return (
            f"dlexp: error: {group}=null: a config group takes one of its options, not null; "
            f"{group}'s options are {', '.join(options)} (e.g. {group}={options[0]}).\n"
            if options
            else "dlexp: error: a config group was given null; give one of its options.\n"
        )
    plugin = re.search(r"Could not find 'hydra/(sweeper|launcher)/(\w+)'", text)
    extras = {
        "optuna": "optuna",
        "joblib": "joblib",
        "submitit_slurm": "slurm",
        "submitit_local": "slurm",
    }
    if plugin and plugin.group(2) in extras:
        extra = extras[plugin.group(2)]
        return (
            f"dlexp: error: hydra/{plugin.group(1)}={plugin.group(2)} needs Hydra's "
            f"{plugin.group(2)} plugin, which dlexp installs as an extra: "
            f"pip install 'dlexp[{extra}]' (or, in a clone: pip install -e '.[{extra}]').\n"
        )
    parse = re.search(
        r"(?:Error parsing override '(.*?)'|LexerNoViableAltException: (.*?))\n", text
    )
    override = parse and (parse.group(1) or parse.group(2))
    if not override and "override_grammar" in text:  # Hydra did not say which: find it
        override = _unparsable(args)
    if override and "=" in override:
        key, _, value = override.partition("=")
        return (
            f"dlexp: error: Hydra could not read the override {override!r}: a value with "
            "spaces or characters other than letters, digits and /._-~: must be quoted for "
            f"Hydra, inside the shell's quotes: {shell_override(key, value.strip(chr(39)))}\n"
        )
    found = re.search(r"Could not override '([\w.]+)'", text)
    if not found or "not in struct" not in text:
        return text
    key = found.group(1)
    from hydra import compose, initialize_config_dir

    from dlexp.checks import config_keys

    kept = [a for a in args if not a.startswith("-") and a.partition("=")[0] != key]
    try:
        with initialize_config_dir(config_dir=config_path, version_base="1.3"):
            known = config_keys(compose("train", overrides=kept))
    except Exception:
        return text
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    value = next(a.partition("=")[2] for a in args if a.partition("=")[0] == key)
    return (
        f"dlexp: error: {key}={value} does not name a setting of this config; {hint}"
        "`dlexp train --cfg job` lists every key of this config.\n"
    )


def _unparsable(args: list[str]) -> str | None:
    """The first command-line override Hydra's grammar cannot read (e.g. a sweep job's folder,
    `0_optimizer.lr=0.1`, given unquoted as a path)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            parser.parse_override(arg)
        except Exception:
            return arg
    return None


def hydra_job(cfg: DictConfig) -> float:
    """One `dlexp train` job as Hydra runs it (a module-level function, so that launchers
    that ship jobs to other processes can pickle it): `train(cfg)`, then its objective."""
    from hydra.core.hydra_config import HydraConfig

    from dlexp.errors import user_error
    from dlexp.run import train
    from dlexp.trainer import Interrupted

    job = IN_HYDRA_JOB.set(True)
    try:
        return objective(cfg, train(cfg))
    except Interrupted as stop:
        print(f"dlexp: {stop}", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None
    except Exception as exc:
        err = user_error(exc)
        hc = HydraConfig.get()
        if in_sweep(hc):  # one bad job must not stop a sweep; its folder says why
            return sweep_job_failed(cfg, hc, exc)
        if err is None:
            raise
        print(f"dlexp: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        IN_HYDRA_JOB.reset(job)


def sweep_job_failed(cfg: DictConfig, hc: DictConfig, exc: Exception) -> float:
    """Record a failed sweep job in its folder (metrics.json says why) and go on: NaN is a
    failed trial for sweepers that optimise."""
    from dlexp.errors import user_error

    err = user_error(exc)
    reason = str(err) if err else f"{type(exc).__name__}: {exc}"
    if err is None:  # a crash: its traceback goes to the job's log
        log.error(f"job {hc.job.num} crashed", exc_info=exc)
    print(f"dlexp: job {hc.job.num} failed: {reason}", file=sys.stderr)
    folder = Path(hc.runtime.output_dir)
    if folder.is_dir() and status_of(folder) in (None, "unfinished"):
        from dlexp.checkpoint import save_json

        if not (folder / ".hydra").is_dir():  # refused before it was recorded
            hydra_record(folder, cfg, hc)
        save_json(folder / "metrics.json", {"status": "failed", "message": reason})
    return float("nan")


def hydra_train(args: list[str], config_path: str) -> None:
    """`dlexp train <args>`: Hydra composes the config (one run, or a sweep's jobs); each job
    is `hydra_job(cfg)`. A failing sweep job is recorded and the sweep goes on."""
    import hydra

    completing = "-sc" in args or "--shell-completion" in args
    if completing:  # Hydra completes overrides after the program's name: drop `train`
        line = os.environ.get("COMP_LINE", "")
        os.environ["COMP_LINE"] = re.sub(r"^(\S+)\s+train\b", r"\1", line)
    else:
        check_output_root(args)
        check_grid_size(args)
        args = resume_sweep_args(args)
    # The installed completion script runs `<program> -sc query=...`: name it `dlexp`.
    sys.argv = ["dlexp" if completing else "dlexp train", *args]
    from dlexp.report import SweepSummary

    _HeldStderr.start()
    SweepSummary.failed = (0, 0)
    try:
        hydra.main(version_base="1.3", config_path=config_path, config_name="train")(hydra_job)()
        failed, total = SweepSummary.failed
        if failed:
            sys.stderr.write(_HeldStderr.release())
            print(
                f"dlexp: {failed} of {total} sweep jobs failed; summary.csv names them and why.",
                file=sys.stderr,
            )
            raise SystemExit(1)
    except SystemExit as exit_:
        held = _HeldStderr.release()
        if exit_.code == 1 and held:  # the config did not compose
            message = composition_error(held, args, config_path)
            sys.stderr.write(message)
            raise SystemExit(2 if message.startswith("dlexp:") else 1) from None
        sys.stderr.write(held)
        raise
    finally:
        sys.stderr.write(_HeldStderr.release())
