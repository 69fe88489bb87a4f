"""Checkpoint files: written atomically, read back safely (weights_only) with clear errors."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dlexp.errors import DlexpError

_deferred: list[tuple[str, Path]] | None = None  # (temporary file, its place): see one_sync


def atomic_write(path: Path, write) -> None:
    """Call write(file_object) on a temporary file next to `path`, then rename it into place.

    A crash (or a full disk) mid-write leaves the previous file untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if _deferred is None:
                os.fsync(f.fileno())
        if _deferred is None:
            os.replace(tmp, path)
        else:
            _deferred.append((tmp, path))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def one_sync() -> Iterator[None]:
    """Files written atomically inside reach the disk with one sync at the end, then are
    renamed into place (a stacked group writes thousands; an fsync each costs ms)."""
    global _deferred
    outer, _deferred = _deferred, []
    try:
        yield
        os.sync()
        for tmp, path in _deferred:
            os.replace(tmp, path)
    finally:
        for tmp, _ in _deferred:
            Path(tmp).unlink(missing_ok=True)
        _deferred = outer


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """`state` (see FORMAT), written atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


def yaml_text(node: Any) -> str:
    """OmegaConf.to_yaml's YAML of plain containers, by libyaml when PyYAML has it (Hydra's
    record of a sweep job takes ~20 ms in pure Python; a 2,000-job sweep writes 2,000)."""
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(
        node, Dumper=dumper, default_flow_style=False, allow_unicode=True, sort_keys=False
    )


def save_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))


def find_checkpoint(run: str | Path, which: str = "last") -> Path:
    """A checkpoint file itself, or `checkpoints/<which>.pt` inside a run folder."""
    path = Path(run).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / f"{which}.pt"
    if which == "best" and not path.is_file() and (path.parent / "last.pt").is_file():
        raise DlexpError(
            f"{path.parent.parent} has no best.pt (no epoch finished with a validation score, "
            "or it was trained with trainer.checkpoint=false for best); use ckpt=last."
        )
    if not path.is_file():
        raise DlexpError(
            f"no checkpoint at {path}. Give a run folder (one that holds checkpoints/{which}.pt, "
            "e.g. outputs/runs/<model>_<data>_<time>) or the path of a .pt checkpoint file."
        )
    return path


# The checkpoint layout. Bump FORMAT when it changes, and teach `_upgrade` the old one.
#   format   this number
#   run_id   the run that wrote it (a run folder refuses another run's checkpoint)
#   config   the composed config (YAML); meta: the data's DataMeta as a dict
#   model    the model's state_dict; optimizers: {config key: state_dict}
#   scheduler, scaler   their state_dicts (scheduler may be None)
#   loop     where the loop stands: LoopState as a dict
#   rng      the RNG states (torch, cuda); None for a stacked job (it draws from none)
# The run's history is its TensorBoard events (dlexp.record); formats 1 to 3 also held it
# (format 3 as pickled bytes), which is ignored when they load, never unpickled.
FORMAT = 4


@dataclass
class LoopState:
    """Where the training loop stands; a checkpoint stores exactly this."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of the next epoch done
    step: int = 0  # optimizer steps in all
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # the epoch's running metric sums
    seen: int = 0  # samples of the epoch so far
    best: float = 0.0  # the best monitored value so far
    stale: int = 0  # epochs since it improved


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """An older checkpoint in today's layout: format 1 kept the loop at the top (and no run
    id); formats 1 to 3 kept the history (the event files hold it)."""
    state = {k: v for k, v in state.items() if k != "history"}
    if state.get("format", 1) == 1:
        loop = {
            k: state.pop(k) for k in ("epoch", "batch", "step", "sums", "seen", "best", "stale")
        }
        state["optimizers"] = state.pop("optimizer")
        state = {**state, "loop": loop, "run_id": None}
    return {**state, "format": FORMAT}


def _unreadable(path: Path, err: Exception) -> str:
    """Why torch could not load `path`, in dlexp's words (never torch's weights_only advice)."""
    with open(path, "rb") as f:
        head = f.read(2)
    torch_file = head == b"PK" or head[:1] == b"\x80"  # torch.save's zip, or a raw pickle
    if torch_file and "Weights only load failed" in str(err):
        return (
            f"{path} holds pickled Python objects, which dlexp never loads (they could run code)"
            "; it is not a dlexp checkpoint. Use checkpoints/last.pt or best.pt of a dlexp run."
        )
    if head != b"PK":
        return (
            f"{path} is not a dlexp checkpoint (it is not a file that torch.save wrote: text, "
            "JSON or another format?). Use checkpoints/last.pt or best.pt from a dlexp run folder."
        )
    best = path.with_name("best.pt")
    hint = (
        f" {best} is intact: continue from it with dlexp train trainer.resume={best}"
        if path.name == "last.pt" and best.is_file() and _loads(best)
        else ""
    )
    return (
        f"{path} is a damaged dlexp checkpoint (truncated or corrupted, e.g. by a full disk or "
        f"an interrupted copy); it was left as it is.{hint}"
    )


def _loads(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except Exception:
        return False


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with weights_only=True: a file that carries pickled code is refused, not run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DlexpError(_unreadable(path, err)) from err
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise DlexpError(
            f"{path} is not a dlexp checkpoint (it lacks the model weights and config that "
            "dlexp writes); use checkpoints/last.pt or best.pt from a dlexp run folder."
        )
    version = state.get("format", 1)
    if type(version) is int and version in (1, 2, 3):
        state = _upgrade(state)
    elif version != FORMAT or type(version) is not int:
        raise DlexpError(
            f"{path} has checkpoint format {version!r}, and this dlexp reads formats 1 to "
            f"{FORMAT}. It was written by another version of dlexp: use that version, or "
            "upgrade dlexp (pip install -U dlexp) if it is newer."
        )
    wrong = _wrong_value(state)
    if wrong:
        raise DlexpError(
            f"{path} is a damaged or altered dlexp checkpoint: {wrong}. It was not used; "
            "continue from another checkpoint of the run (best.pt or last.pt)."
        )
    return state


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _wrong_value(state: dict[str, Any]) -> str | None:
    """What in a loaded checkpoint is not what dlexp writes (None: all is): every stored value
    is checked before use, a crafted file is refused, not trusted."""
    import yaml

    try:
        config = yaml.load(state["config"], Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except Exception:
        config = None
    if not isinstance(config, dict) or not all(k in config for k in ("model", "data", "task")):
        return "its stored config is not a dlexp config"
    meta = state.get("meta")
    shapes = {"name": str, "kind": str, "input_shape": list | tuple, "num_classes": int}
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k), t) for k, t in shapes.items()):
        return f"its data description (meta) is {meta!r}"
    counts = [*meta["input_shape"], meta.get("num_targets", 1)]
    if not all(_count(n) and n > 0 for n in counts) or not _count(meta["num_classes"]):
        return f"its data description (meta) has input shape {meta['input_shape']!r}"
    if not isinstance(state.get("model"), dict) or not all(
        isinstance(v, torch.Tensor) for v in state["model"].values()
    ):
        return "its model weights are not tensors"
    loop = state.get("loop")
    if not isinstance(loop, dict):
        return f"its loop state is {loop!r}"
    for key in ("epoch", "batch", "step", "seen", "stale"):
        if not _count(loop.get(key)):
            return f"its loop.{key} is {loop.get(key)!r} (a whole number >= 0 is written)"
    if not isinstance(loop.get("best"), float | int) or isinstance(loop.get("best"), bool):
        return f"its loop.best is {loop.get('best')!r}"
    sums = loop.get("sums")
    if not isinstance(sums, dict) or not all(isinstance(v, torch.Tensor) for v in sums.values()):
        return "its loop.sums are not tensors"
    return None
