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

if os.environ.get("PYTEST_XDIST_WORKER"):  # one of pytest-xdist's workers, one per core:
    # a thread pool each would oversubscribe the cores (tiny ops wait on it: the suite took
    # 155-165 s with them, ~130 s without). The subprocesses tests start inherit the setting,
    # so that their numbers match this process's bit for bit.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _parse_configs_once():
    """Each composition parses every YAML file it reads again (pure-Python PyYAML: ~0.3 s of
    a test's ~0.6 s); the suite composes ~1,000 configs from the same few hundred files. Here
    a file's text is parsed once per process and each load gets a fresh copy of what it
    parsed, so OmegaConf.load returns what it always would (test_presets holds composed
    configs to their files). Tests only: dlexp composes once per command or job."""
    import copy
    import io

    import yaml
    from omegaconf import OmegaConf
    from omegaconf._utils import get_yaml_loader

    parsed: dict[str, object] = {}
    real = OmegaConf.load

    def load(file_):
        if isinstance(file_, str | Path):
            with open(os.path.abspath(file_), encoding="utf-8") as f:
                text = f.read()
        elif getattr(file_, "read", None):
            text = file_.read()
        else:
            return real(file_)
        if text not in parsed:
            parsed[text] = yaml.load(io.StringIO(text), Loader=get_yaml_loader())
        return (
            real(io.StringIO(""))
            if parsed[text] is None
            else OmegaConf.create(copy.deepcopy(parsed[text]))
        )

    OmegaConf.load = staticmethod(load)
    return real


REAL_LOAD = _parse_configs_once()  # (tests/test_presets.py holds the copy to the real loader)


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


_COMPOSED: dict[tuple[str, ...], DictConfig] = {}


def make_cfg(*overrides: str) -> DictConfig:
    """The config `dlexp train <overrides>` would run (quiet progress): composed once per
    process for the same overrides, each caller getting its own copy (interpolations such as
    ${oc.env:DLEXP_DATA} stay unresolved, read when used)."""
    import copy

    if overrides not in _COMPOSED:
        _COMPOSED[overrides] = compose_train("trainer.progress=none", *overrides)
    return copy.deepcopy(_COMPOSED[overrides])


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
