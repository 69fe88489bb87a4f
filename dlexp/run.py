"""The life of a run, from its composed config: `train(cfg)`.

This module owns: the run folder's name (`run_name`, for single runs, resumed runs and
torchrun), claiming the folder (`claim`: a lock naming the process; another run's folder is
never overwritten), what the folder already holds (a finished run, an unfinished one to
continue, a finished sweep job to skip), resuming (`trainer.resume`), launching
`trainer.devices=N` processes (torchrun) and the sweep objective. `dlexp.hydra_app` is the
command line around it; dlexp.fit trains what it opens.

`open_run` ties these together: it yields a `Run` that says where to write, which config to
train and which checkpoint to continue from, and it releases the folder (and removes what it
made, if the run was refused before training) when the run ends.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dlexp.build import SETTINGS
from dlexp.checkpoint import find_checkpoint, load_checkpoint, save_json, yaml_text
from dlexp.checks import check_config
from dlexp.errors import DlexpError
from dlexp.record import LOG_FORMAT

log = logging.getLogger("dlexp")


LOCK = "run.lock"
# What a run leaves in its folder: removed by trainer.overwrite=true before a new run.
RUN_FILES = ("checkpoints", "metrics.json", "run.json", "train.log", ".hydra")
FINISHED = ("completed", "diverged")
# The launcher of a multi-process run holds the folder for its processes (dlexp.distributed).
LAUNCHED = "DLEXP_LAUNCHED_RUN"


# ------------------------------------------------------------------------- names
def run_name(model: str, data: str) -> str:
    """`<model>_<data>_<time>` (what tells runs apart first: TensorBoard's run list and HParams
    table cut long names); every process of a torchrun job gets torchrun's run id instead of
    the time, so that they agree on one folder."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        stamp = f"torchrun-{run_id}"
    else:
        now = time.time()
        micro = f"{now % 1:.6f}"[2:]  # unique even for runs started in the same second
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now)) + f"-{micro}"
    return f"{model}_{data}_{stamp}"


def run_dir_for(out_root: str, model: str, data: str, resume: str | None) -> str:
    """hydra.run.dir: the resumed run's own folder, else a new one under <out_root>/runs."""
    if resume:
        with contextlib.suppress(DlexpError):
            folder = folder_of(find_checkpoint(resume))
            if folder is not None:
                return str(folder)
    return os.path.join(out_root, "runs", run_name(model, data))


OmegaConf.register_new_resolver("dlexp_run_dir", run_dir_for, replace=True)


def folder_of(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint belongs to (None for a loose file outside any run)."""
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    return None


def default_run_dir(cfg: DictConfig) -> Path:
    """Outside the CLI (tests, notebooks) runs land in <out_root>/runs/<model>_<data>_<time>."""
    model = cfg.model._target_.rsplit(".", 1)[-1].lower()
    return Path(cfg.out_root) / "runs" / run_name(model, cfg.data.name)


# -------------------------------------------------------------------- claiming
def _read_lock(fd: int) -> dict[str, Any]:
    """The lock's record of its holder ({} for anything that is not dlexp's record)."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        record = json.loads(os.read(fd, 4096) or b"{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def claim(run_dir: Path) -> int | None:
    """Lock `run_dir` for this process (flock on run.lock, which names the process).

    The lock dies with its process, so a run killed by SIGKILL leaves a stale file that the
    next run takes over (and says so). Returns the lock's file descriptor, or None when the
    launcher of this multi-process run holds the folder for it.
    """
    path = run_dir / LOCK
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            if path.is_symlink() or (path.exists() and not path.is_file()):
                raise DlexpError(
                    f"{path} is not a regular file (a link, or a folder): dlexp writes its lock "
                    "only to a file of its own. Remove it, or run in another folder (leave out "
                    "hydra.run.dir for a new one)."
                )
            # (O_NOFOLLOW: a link put there between the check and the open is refused too)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_lock(fd)
                os.close(fd)
                raise DlexpError(
                    f"{run_dir} is in use by another run (process {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')}, started {holder.get('started', '?')}). Two runs "
                    "never share a folder: wait for that one to finish, or start this one in "
                    "another folder (leave out hydra.run.dir for a new one)."
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file its owner removed while we waited for it
                break
            os.close(fd)
        stale = _read_lock(fd)
        if stale.get("pid"):
            log.warning(
                f"{run_dir}: taking over the lock of process {stale['pid']} on "
                f"{stale.get('host', '?')}, which ended without releasing it"
            )
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        return fd
    except OSError as err:
        raise DlexpError(
            f"cannot use {run_dir} as a run folder: {err.strerror or err} ({err.filename or path})"
            ". Make it writable, or run somewhere else (DLEXP_OUTPUTS=<folder>, or "
            "hydra.run.dir=<folder>)."
        ) from err


MIN_FREE = 32 * 2**20  # TensorBoard, the log and a small model's checkpoints need this much


def _check_space(run_dir: Path) -> None:
    """A full disk fails in TensorBoard's writer thread, in torch.save and in logging, each with
    its own traceback: say it once, before anything is written."""
    free = shutil.disk_usage(run_dir).free
    if free < MIN_FREE:
        kept = " Its checkpoints are intact." if (run_dir / "checkpoints").is_dir() else ""
        raise DlexpError(
            f"the disk holding {run_dir} is full ({free / 2**20:.1f} MB free), so the run would "
            f"fail writing its log, curves and checkpoints; nothing was written.{kept} Free some "
            "space, or put runs on another disk (DLEXP_OUTPUTS=<folder>)."
        )


def release(run_dir: Path, fd: int | None) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        (run_dir / LOCK).unlink()
    os.close(fd)


# ------------------------------------------------------------ what a folder holds
def status_of(run_dir: Path) -> str | None:
    """The run already in a folder: completed/diverged/interrupted/failed, `unfinished` (a
    checkpoint but no result: killed), or None (no run there)."""
    try:
        status = json.loads((run_dir / "metrics.json").read_text()).get("status")
    except (OSError, ValueError):
        status = None
    if status is None and (run_dir / "checkpoints" / "last.pt").is_file():
        return "unfinished"
    return status


def run_id_of(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("id")
    except (OSError, ValueError):
        return None


def metrics_of(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def resumed_config(stored_yaml: str, cfg: DictConfig, overrides: list[str] | None) -> DictConfig:
    """The config a resumed run continues with.

    From the command line (`overrides` given): the run's own config plus this command's value
    overrides (e.g. more epochs); a different group choice (model=..., data=...) is refused.
    From `train(cfg)` (no overrides): `cfg` itself, whose model, data and task must be the run's.
    """
    stored = OmegaConf.create(stored_yaml)
    if overrides is None:
        for key in ("model", "data", "task"):
            ours = OmegaConf.to_container(cfg[key], resolve=True)
            if ours != OmegaConf.to_container(stored[key], resolve=True):
                raise DlexpError(
                    f"the config's {key} differs from the run being resumed: a run keeps the "
                    "model, data and task it was started with. Start a new run instead."
                )
        stored = cfg.copy()
    else:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        for override in overrides:
            key = override.partition("=")[0].lstrip("+~")
            if key in ("trainer.resume", "hydra.run.dir"):
                continue
            if key in choices:
                if OmegaConf.select(cfg, key) == OmegaConf.select(stored, key):
                    continue  # the choice the run already has (the same command run again)
                raise DlexpError(
                    f"{override!r} cannot change a run that is being resumed: it keeps the "
                    f"model, data and other choices it was started with. Start a new run "
                    f"instead, or resume with value overrides only (e.g. trainer.epochs=20)."
                )
            OmegaConf.update(stored, key, OmegaConf.select(cfg, key), force_add=True)
    stored.trainer.resume = None
    stored.trainer.progress = cfg.trainer.progress
    return stored


# ------------------------------------------------------------------------- a run
@dataclass
class Run:
    """What `open_run` decided: where the run writes, its config, and how it starts."""

    dir: Path
    cfg: DictConfig
    id: str
    resume: dict[str, Any] | None = None  # the checkpoint to continue from
    done: dict[str, Any] | None = None  # set when there is nothing to train (metrics to return)
    made: list[Path] = field(default_factory=list)  # what this run created (removed if refused)
    started: bool = False  # training began: from here on the folder is kept whatever happens
    notes: list[str] = field(default_factory=list)  # what was decided, for the run's log
    hydra: Any = None  # Hydra's config of this job (None outside `dlexp train`)

    @property
    def resume_command(self) -> str:
        return f"dlexp train {shell_override('trainer.resume', str(self.dir))}"


def shell_override(key: str, value: str) -> str:
    """`key=value` as a shell word that reaches Hydra intact, for any path (spaces, quotes,
    non-ASCII): Hydra reads a quoted value literally, and the shell keeps Hydra's quotes."""
    import shlex

    if all((c.isalnum() and c.isascii()) or c in "/._-~:+" for c in value):
        return f"{key}={value}"
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    if not set(escaped) & set('"$`!\\'):
        return f"\"{key}='{escaped}'\""  # the common case: readable
    return shlex.quote(f"{key}='{escaped}'")


# Set while `dlexp train`'s Hydra job function runs: only then is HydraConfig this run's own
# (a compose() in a notebook or test leaves one behind that describes no run).
IN_HYDRA_JOB = contextvars.ContextVar("dlexp_hydra_job", default=False)


def _hydra() -> tuple[Any, list[str] | None]:
    from hydra.core.hydra_config import HydraConfig

    if not IN_HYDRA_JOB.get():
        return None, None
    hc = HydraConfig.get()
    return hc, list(hc.overrides.task)


def in_sweep(hc) -> bool:
    from hydra.types import RunMode

    return hc is not None and hc.mode == RunMode.MULTIRUN


def _added_keys_check(cfg: DictConfig, overrides: list[str]) -> None:
    """`+trainer.epoch=3` composes, but no code would read it: refuse it, naming the real key.
    (Hydra adds a key with `+` only where none is, so every key added is a new one.)"""
    added = [o for o in overrides if o.startswith("+")]
    if not added:
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dlexp.checks import check_known_keys

    keys = [
        o.key_or_group
        for o in OverridesParser.create().parse_overrides(added)
        if o.package is None and "/" not in o.key_or_group  # (not a config group added)
    ]
    check_known_keys(cfg, keys, ("trainer", "data", "task", "device", "sweep"))


@contextlib.contextmanager
def open_run(cfg: DictConfig, run_dir: Path | None = None, log_file: bool = True) -> Iterator[Run]:
    """Decide, claim and prepare the run folder for `cfg`; release it when the run ends.
    `log_file=False`: the caller writes the run's train.log (the batched launcher)."""
    hc, overrides = _hydra()
    rank = int(os.environ.get("RANK", "0"))
    hydra_dir = Path(hc.runtime.output_dir) if hc is not None else None
    # Hydra makes its run folder before the run starts: an empty one is this run's own.
    made = [hydra_dir] if hydra_dir and hydra_dir.is_dir() and not any(hydra_dir.iterdir()) else []
    run_dir = run_dir or hydra_dir
    fd, run = None, None
    try:
        check_config(cfg, SETTINGS)
        if overrides is not None:
            _added_keys_check(cfg, overrides)
        if cfg.sweep.get("fresh_weights") and in_sweep(hc) and cfg.get("init_seed") is None:
            cfg.init_seed = cfg.seed + hc.job.num  # (stored in the job's config: what ran)
        resume, resume_path = None, None
        if cfg.trainer.get("resume"):
            resume_path = find_checkpoint(cfg.trainer.resume, "last")
            resume = load_checkpoint(resume_path)
            cfg = resumed_config(resume["config"], cfg, overrides)
            check_config(cfg, SETTINGS)
            folder = folder_of(resume_path)
            if folder is not None:
                run_dir = folder
            elif run_dir is None or (run_dir.exists() and any(run_dir.iterdir())):
                run_dir = default_run_dir(cfg)  # a loose .pt starts a new run folder
        run_dir = Path(run_dir or default_run_dir(cfg))
        launched = os.environ.get(LAUNCHED) == str(run_dir)
        if not run_dir.exists():
            made.append(run_dir)
        fd = claim(run_dir) if rank == 0 and not launched else None
        _check_space(run_dir)
        run = Run(run_dir, cfg, run_id_of(run_dir) or uuid.uuid4().hex, resume)
        run.made, run.hydra = made, hc
        if not launched:
            _decide(run, resume_path, hc, overrides)
            if run.cfg is not cfg:  # the stored config of a run it continues
                check_config(run.cfg, SETTINGS)
        if run.done is None and rank == 0 and not launched:
            _prepare(run, hc)
        if rank == 0 and log_file and not (run.dir / "train.log").exists():
            run.made.append(run.dir / "train.log")
        with _log_file(run.dir if rank == 0 and log_file else None):
            for note in run.notes:
                log.info(note)
            yield run
    except BaseException:
        if (run is None or not run.started) and not in_sweep(hc):
            if run_dir is not None:
                release(Path(run_dir), fd)  # our lock first, so that an empty folder goes
                fd = None
            _remove(made)
        raise
    finally:
        if run_dir is not None:
            release(Path(run_dir), fd)


def _decide(run: Run, resume_path: Path | None, hc, overrides: list[str] | None) -> None:
    """Continue, skip, replace or refuse, given what the folder already holds."""
    status, cfg = status_of(run.dir), run.cfg
    if run.resume is not None:
        folder_id = run_id_of(run.dir)
        if folder_of(resume_path) == run.dir and run.resume["run_id"] not in (None, folder_id):
            raise DlexpError(
                f"{resume_path} was written by another run than the one in {run.dir} (it was "
                "copied there?), so it is not resumed. Continue that run in its own folder, or "
                "start a new run from it by giving a copy of the file outside any run folder."
            )
        if folder_of(resume_path) != run.dir:
            run.notes.append(f"continuing {resume_path} as a new run in {run.dir}")
            run.id = uuid.uuid4().hex
        loop = run.resume["loop"]
        if loop["epoch"] >= cfg.trainer.epochs and loop["batch"] == 0 and status in FINISHED:
            run.notes.append(
                f"{run.dir} is complete ({loop['epoch']} of {cfg.trainer.epochs} epochs); "
                "nothing to do. To train it further, raise trainer.epochs."
            )
            run.done = metrics_of(run.dir)
        else:
            run.notes.append(f"resuming {run.dir} from {resume_path.name}")
        return
    if status is None:
        return
    if cfg.get("sweep", {}).get("resume") and status in FINISHED:
        run.notes.append(f"{run.dir.name}: already finished, skipped (sweep.resume=true)")
        run.done = metrics_of(run.dir)
        return
    if cfg.trainer.get("overwrite") or status == "failed":  # a failed job left no results
        run.notes.append(f"replacing the {status} run in {run.dir}")
        for name in RUN_FILES:
            target = run.dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        for events in run.dir.glob("events.out.tfevents.*"):
            events.unlink()
        run.id = uuid.uuid4().hex
        return
    last = run.dir / "checkpoints" / "last.pt"
    if status not in FINISHED and last.is_file():
        # An interrupted (or killed) run whose folder is used again: a requeued job goes on.
        run.resume = load_checkpoint(last)
        if run.resume["run_id"] not in (None, run_id_of(run.dir)):
            raise DlexpError(
                f"{last} was written by another run than the one in {run.dir}; it is not "
                "continued. Choose another folder, or replace that run with trainer.overwrite=true."
            )
        run.cfg = resumed_config(run.resume["config"], cfg, overrides)
        run.notes.append(f"continuing the {status} run in {run.dir} from its last checkpoint")
        return
    raise DlexpError(
        f"{run.dir} already holds a {status} run, and a new run never replaces another. "
        f"Continue that one with: dlexp train {shell_override('trainer.resume', str(run.dir))} "
        "(add e.g. trainer.epochs=20 to train it longer); or start this one in another folder "
        "(leave out hydra.run.dir for a new one); or replace it with trainer.overwrite=true."
    )


def _prepare(run: Run, hc) -> None:
    """A new run's identity (run.json) and its config (.hydra/config.yaml; from the command
    line, Hydra's whole .hydra/ record)."""
    if (run.dir / "run.json").is_file() and run_id_of(run.dir) == run.id:
        return  # the run continues in its own folder
    command = " ".join(["dlexp train", *hc.overrides.task]) if hc is not None else "train(cfg)"
    save_json(
        run.dir / "run.json",
        {"id": run.id, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command},
    )
    run.made.append(run.dir / "run.json")
    if hc is not None:
        run.made.append(hydra_record(run.dir, run.cfg, hc))
    else:  # train(cfg) from Python: what ran, where the command's runs keep it
        (run.dir / ".hydra").mkdir(exist_ok=True)
        run.made.append(run.dir / ".hydra")
        _save_yaml(
            OmegaConf.to_container(run.cfg, enum_to_str=True), run.dir / ".hydra" / "config.yaml"
        )


def hydra_record(run_dir: Path, cfg: DictConfig, hc) -> Path:
    """What Hydra itself writes into .hydra/ when output_subdir is set."""
    out = run_dir / ".hydra"
    out.mkdir(exist_ok=True)
    _save_yaml(OmegaConf.to_container(cfg, enum_to_str=True), out / "config.yaml")
    _save_yaml({"hydra": OmegaConf.to_container(hc, enum_to_str=True)}, out / "hydra.yaml")
    _save_yaml(list(hc.overrides.task), out / "overrides.yaml")
    return out


def _save_yaml(node: Any, path: Path) -> None:
    path.write_text(yaml_text(node), encoding="utf-8")


def _remove(made: list[Path]) -> None:
    """A run refused before it trained leaves nothing behind: what it made goes (its own
    folder only when nothing else is in it)."""
    for path in reversed(made):
        if path.name == ".hydra":
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_dir():  # a run folder (another process may be using it: only if empty)
            with contextlib.suppress(OSError):
                path.rmdir()
        else:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _log_file(run_dir: Path | None) -> Iterator[None]:
    """Time-stamped log lines in <run>/train.log while the run lasts."""
    if run_dir is None:
        yield
        return
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def objective(cfg: DictConfig, metrics: dict[str, Any]) -> float:
    """The value a sweeper optimises: `objective`, or the metric that picked best.pt."""
    if metrics.get("status") not in (None, "completed"):
        return float("nan")  # a diverged job skipped by sweep.resume: a failed trial
    key = cfg.get("objective") or metrics["monitor"]
    if key not in metrics:
        known = ", ".join(k for k in metrics if k.startswith(("train/", "val/", "test/")))
        raise DlexpError(f"objective={key!r} is not a metric of this run; its metrics are {known}.")
    return metrics[key]


# ------------------------------------------------------------------ training
def train(cfg: DictConfig, run_dir: Path | None = None) -> dict[str, Any]:
    """Train the configured model; returns the final metrics (also in <run_dir>/metrics.json;
    each epoch's are in its TensorBoard events: dlexp.record.read_history).

    The run folder is `run_dir`, Hydra's run folder, or a new one under <out_root>/runs; it is
    claimed for this run. With `trainer.resume=<run folder or checkpoint>` it continues that
    run, in its folder, from its last checkpoint, exactly as if it had never stopped.
    `trainer.devices=N` trains with N processes (torchrun).
    """
    return train_in(cfg, run_dir)[1]


def train_in(cfg: DictConfig, run_dir: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """`train`, also saying which folder the run took (a new one, or the resumed run's)."""
    from dlexp.fit import fit

    with open_run(cfg, run_dir) as run:
        if run.done is not None:
            return run.dir, run.done
        if run.cfg.trainer.devices > 1 and "LOCAL_RANK" not in os.environ:
            return run.dir, launch(run)
        return run.dir, fit([run])[0]


def launch(run: Run) -> dict[str, Any]:
    """Train `run` as `trainer.devices` processes under torchrun (torch.distributed.run).

    This process holds the run folder for them; each process gets the run's config and folder
    through its environment and calls `train(cfg, run_dir)` (dlexp.torchrun).
    """
    import subprocess
    import sys

    devices = int(run.cfg.trainer.devices)
    cfg = run.cfg.copy()
    if run.resume is not None and not cfg.trainer.resume:
        cfg.trainer.resume = str(run.dir / "checkpoints" / "last.pt")  # a requeued run
    env = {**os.environ, LAUNCHED: str(run.dir), "DLEXP_RUN_CONFIG": OmegaConf.to_yaml(cfg)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={devices}",
        "-m",
        "dlexp.torchrun",
    ]
    log.info(f"starting {devices} processes with torch.distributed.run; run folder {run.dir}")
    run.started = True  # whatever happens now, the folder is the run's
    code = subprocess.call(cmd, env=env)
    if code:
        raise DlexpError(
            f"a process of the distributed run in {run.dir} failed (exit status {code}) and the "
            "others were stopped; torchrun's summary above names its rank, exit code and error."
        )
    return metrics_of(run.dir)
