"""Shared fixtures: generated data sets in torchvision's formats, composed configs, CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig

import fake_data
from dlexp.cli import compose_train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _root_logging():
    """Hydra's own logging config (a launcher configures it per sweep) binds a handler to the
    sys.stdout of the moment, pytest's capture of one test: the next tests must not log to it."""
    import logging

    root = logging.getLogger()
    before = list(root.handlers)
    yield
    root.handlers[:] = before


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One data root holding every image data set, small, in the real on-disk formats."""
    root = tmp_path_factory.mktemp("data")
    fake_data.mnist_root(root, "MNIST")
    fake_data.mnist_root(root, "FashionMNIST")
    fake_data.emnist_root(root, "letters")
    fake_data.emnist_root(root, "digits")
    fake_data.cifar10_root(root)
    fake_data.stl10_root(root)
    return root


@pytest.fixture
def env(tmp_path, data_root, monkeypatch) -> dict[str, str]:
    """Environment for runs: outputs in a temporary folder, data from the generated root, the
    decoded-data cache beside it (shared by the session's tests)."""
    out = tmp_path / "outputs"
    cache = data_root.parent / "cache"
    monkeypatch.setenv("DLEXP_OUTPUTS", str(out))
    monkeypatch.setenv("DLEXP_DATA", str(data_root))
    monkeypatch.setenv("DLEXP_CACHE", str(cache))
    return {
        **os.environ,
        "DLEXP_OUTPUTS": str(out),
        "DLEXP_DATA": str(data_root),
        "DLEXP_CACHE": str(cache),
    }


def make_cfg(*overrides: str) -> DictConfig:
    """The config `dlexp train <overrides>` would run (quiet progress)."""
    return compose_train("trainer.progress=none", *overrides)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """`dlexp <args>` in this process: (exit status, stdout, stderr)."""
    from dlexp.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def dlexp(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: int = 300):
    """Run the real `dlexp` command in a subprocess; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "dlexp", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def fresh_venv(tmp_path: Path, *install: str) -> Path:
    """A new virtual environment with `pip install --no-deps <install>` (reusing this
    environment's torch and other dependencies through a .pth file, not a 5 GB reinstall);
    its python."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    here = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir())
    (site / "reuse_torch.pth").write_text(here + "\n")
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", *install],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr
    return venv / "bin" / "python"


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a run folder's TensorBoard event files: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def read_tags(run_dir: Path) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    acc.Reload()
    return acc.Tags()


def read_hparams(run_dir: Path) -> tuple[dict[str, object], list[str]]:
    """The HParams plugin's session record in a run folder: (hyperparameters, the scalar tags
    TensorBoard offers as its metrics)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = {}
    for key, value in start.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        hparams[key] = getattr(value, kind)
    return hparams, acc.Tags()["scalars"]
