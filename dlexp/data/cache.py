"""Decode a data set once: reuse its tensors within a process and across runs (on disk).

The disk cache lives in the user's cache folder (`$DLEXP_CACHE`, else `$XDG_CACHE_HOME/dlexp`,
else `~/.cache/dlexp`), never in the data folder, which may be shared or read-only;
`data.cache=false` turns it off. A cache file is keyed by the loader's config and the path,
size and modification time of every source file, so a replaced file is decoded again, and it
stores a CRC-32 of its tensors, so a damaged or foreign cache file is noticed and decoded
afresh. Files are written to a temporary name and renamed, so two runs racing to fill the
cache both end up reading a complete file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from dataclasses import asdict, replace
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dlexp.checkpoint import atomic_write
from dlexp.data.core import DataMeta, Raw, Split

log = logging.getLogger("dlexp")
VERSION = 2  # bump when the decoded layout changes
_MEMORY: dict[str, Raw] = {}
_MEMORY_SIZE = 3  # data sets kept in memory (a sweep reuses one; switching sets evicts)


def _source_files(cfg: DictConfig) -> list[Path]:
    if cfg.source.get("path") and str(cfg.source._target_).startswith("dlexp.data.files."):
        from dlexp.data.files import source_files

        return source_files(cfg.source)
    if "root" not in cfg.source:
        return []
    from dlexp.data.images import expected_files

    folder, files = expected_files(cfg.name, cfg.source.root, cfg.source.get("split", "letters"))
    return [folder / f for f in files]


def _key(source: dict, files: list[Path]) -> str:
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    blob = json.dumps([VERSION, source, stats], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _copy(raw: Raw) -> Raw:
    """A Raw whose metadata the caller may change (the tensors are never changed in place)."""
    return replace(raw, meta=replace(raw.meta))


def load_raw(cfg: DictConfig) -> Raw:
    """The loader's Raw data, decoded at most once per process and once per source files."""
    source = OmegaConf.to_container(cfg.source, resolve=True)
    files = _source_files(cfg)
    key = _key(source, files)
    if key in _MEMORY:
        log.info(f"{cfg.name}: using the tensors decoded earlier in this process")
        return _copy(_MEMORY[key])

    path = None
    if files and all(f.is_file() for f in files) and cfg.get("cache", True):
        path = cache_dir() / f"{cfg.name}-{key}.pt"
    raw = _read(path) if path is not None and path.is_file() else None
    if raw is not None:
        log.info(f"{cfg.name}: loaded the decoded tensors from {path}")
    else:
        raw = instantiate(cfg.source)
        if files:
            log.info(f"{cfg.name}: decoded {len(raw.train)} training samples from {files[0].parent}")
        if path is not None:
            _write(path, raw)

    _MEMORY[key] = raw
    while len(_MEMORY) > _MEMORY_SIZE:
        _MEMORY.pop(next(iter(_MEMORY)))
    return _copy(raw)


def cache_dir() -> Path:
    if os.environ.get("DLEXP_CACHE"):
        return Path(os.environ["DLEXP_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dlexp"


def _checksum(tensors: list[torch.Tensor]) -> int:
    """CRC-32 of the tensors' bytes: about 1 GB/s, cheap next to decoding."""
    crc = 0
    for t in tensors:
        crc = zlib.crc32(t.contiguous().view(torch.uint8).numpy(), crc)
    return crc


def _tensors(raw: Raw) -> list[torch.Tensor]:
    return [raw.train.x, raw.train.y, *((raw.test.x, raw.test.y) if raw.test else ())]


def _write(path: Path, raw: Raw) -> None:
    state = {
        "train": (raw.train.x, raw.train.y),
        "test": (raw.test.x, raw.test.y) if raw.test is not None else None,
        "meta": asdict(raw.meta),
        "crc32": _checksum(_tensors(raw)),
    }
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except OSError as err:  # a read-only data folder or a full disk: just no cache
        log.info(f"(not caching the decoded data in {path.parent}: {err.strerror})")


def _read(path: Path) -> Raw | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        meta = DataMeta(**state["meta"])
        meta.input_shape = tuple(meta.input_shape)
        test = Split(*state["test"]) if state["test"] is not None else None
        raw = Raw(Split(*state["train"]), test, meta)
        if state.get("crc32") != _checksum(_tensors(raw)):
            raise ValueError("its tensors do not match their checksum")
        return raw
    except Exception as err:  # a damaged cache is only a cache: decode again
        log.warning(f"ignoring the cache file {path} ({type(err).__name__}: {err}); decoding again")
        return None
