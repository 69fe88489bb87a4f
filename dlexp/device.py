"""The training device, its precision and the random state a checkpoint keeps."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from omegaconf import DictConfig

from dlexp.errors import DlexpError
from dlexp.settings import Count, Test

log = logging.getLogger("dlexp")


@dataclass
class DeviceSettings:
    """The `device` config: each key's type and range stated once (dlexp.checks)."""

    type: Annotated[
        str,
        Test(
            lambda v: v in ("auto", "cpu", "cuda", "mps") or str(v).startswith("cuda:"),
            "auto, cpu, cuda (or cuda:N) or mps",
        ),
    ]
    threads: Count | None


def pick_device(kind: str) -> torch.device:
    """`auto`: CUDA if present, then Apple's MPS, else the CPU."""
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(kind)


def resolve_device(cfg: DictConfig, deterministic: bool = False) -> torch.device:
    """The `device` config's device, checked to exist; its threads and cuDNN settings."""
    if deterministic:  # cuBLAS needs this set before its first use to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    device = pick_device(cfg.type)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DlexpError(
            f"device={cfg.type} but no CUDA GPU is visible; use device=auto or device=cpu."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DlexpError(
            "device=mps but Apple's MPS backend is not available; use device=auto or device=cpu."
        )
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where autocast pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `trainer.precision`, or None for plain fp32.

    auto: bf16 on CUDA GPUs that have it, else fp32 (the course's numbers); fast: bf16 wherever
    it is native (those GPUs, and CPUs with AVX512-BF16 or AMX), else fp32.
    """
    if precision in ("auto", "fast"):
        native = device.type == "cuda" and torch.cuda.is_bf16_supported()
        cpu = device.type == "cpu" and cpu_has_native_bf16()
        chosen = torch.bfloat16 if native or (precision == "fast" and cpu) else None
        why = "a CUDA GPU with bf16" if native else f"{device.type}"
        if cpu and chosen is None:
            why += "; this CPU has native bf16: trainer.precision=fast uses it (faster conv nets)"
        log.info(f"precision {precision}: {'bf16 autocast' if chosen else 'fp32'} ({why})")
        return chosen
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(dtype: torch.dtype | None, device: torch.device):
    """Autocast to `dtype` (autocast_dtype's answer), or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
