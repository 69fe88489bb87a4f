"""What a preset file states is what runs: every value a model, data or experiment file sets
survives composition (no group merged after it silently replaces it). Experiment files are
checked where they are composed anyway: tests/test_sweeps.py::test_every_experiment_runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO
from dlexp.cli import compose_train

CONFIGS = REPO / "configs"


def leaves(node: object, prefix: str = ""):
    """(dotted key, value) of every leaf of a plain config tree; lists are leaves."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def lookup(tree: dict, key: str) -> object:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return "<absent>"
        tree = tree[part]
    return tree


def stated(path: Path) -> list[tuple[str, object]]:
    """What a group file sets (unresolved), with the keys where composition puts them."""
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    node.pop("defaults", None)
    node.pop("hydra", None)  # the sweep's params (Hydra's own node)
    package = "" if "@package _global_" in path.read_text() else f"{path.parent.name}."
    return [(package + k, v) for k, v in leaves(node)]


def assert_states_survive(path: Path, composed) -> None:
    """Every value the group file at `path` sets is in the `composed` config (dlexp train
    <group>=<file>) unchanged."""
    cfg = OmegaConf.to_container(composed)
    lost = [
        f"{key}: the file says {value!r}, the composed config {lookup(cfg, key)!r}"
        for key, value in stated(path)
        if lookup(cfg, key) != value
    ]
    assert not lost, "\n".join(lost)


FILES = [*sorted((CONFIGS / "model").glob("*.yaml")), *sorted((CONFIGS / "data").glob("*.yaml"))]


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}={p.stem}")
def test_every_value_a_preset_states_survives_composition(path):
    assert_states_survive(path, compose_train(f"{path.parent.name}={path.stem}"))


def test_gan_presets_keep_their_optimizers():
    """The issue's own cases, as `dlexp train model=... --cfg job` shows them."""
    dcgan = compose_train("model=dcgan")
    assert dcgan.optimizer.lr == 0.0002 and list(dcgan.optimizer.betas) == [0.5, 0.999]
    assert dcgan.optimizer_d.lr == 0.0002 and list(dcgan.optimizer_d.betas) == [0.5, 0.999]
    assert compose_train("model=gan").optimizer.lr == 0.0003
    assert compose_train("experiment=dcgan_fashion").optimizer.lr == 0.0002
    # A group chosen on the command line still replaces the preset's choice.
    assert compose_train("model=gan", "optimizer.lr=0.01").optimizer.lr == 0.01


def test_the_suites_parse_once_loader_gives_omegaconfs_configs():
    """conftest parses each config file once per process; every load must still equal
    OmegaConf's own, and a load must not share objects with the next."""
    from conftest import REAL_LOAD

    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(files) > 100
    for path in files:
        ours, theirs = OmegaConf.load(path), REAL_LOAD(path)
        assert OmegaConf.to_container(ours) == OmegaConf.to_container(theirs), path
    first = OmegaConf.load(REPO / "configs" / "model" / "ann.yaml")
    first.hidden.append(1)
    assert OmegaConf.load(REPO / "configs" / "model" / "ann.yaml").hidden == [64, 64]
