"""Every key of dlexp's own groups has its type and range stated once, in the settings class
that reads it (dlexp.settings): a key added to a YAML file without one, or a field without a
key, fails here; and an annotated range is what the check enforces."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from conftest import REPO
from dlexp.build import SETTINGS

CONFIGS = REPO / "configs"


def keys(node: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in node.items():
        if isinstance(value, dict) and value and "_target_" not in value:
            out |= keys(value, f"{prefix}{key}.")
        elif key not in ("defaults", "source") and not (isinstance(value, dict) and not value):
            out.add(f"{prefix}{key}")
    return out


def declared(cls: type, prefix: str = "") -> set[str]:
    """Every (dotted) key a settings dataclass states, nested ones included."""
    import typing

    hints = typing.get_type_hints(cls, include_extras=True)
    out = set()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out |= declared(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.add(f"{prefix}{f.name}")
    return out


@pytest.mark.parametrize(
    "path", [CONFIGS / "trainer" / "default.yaml", *sorted((CONFIGS / "device").glob("*.yaml"))]
)
def test_every_trainer_and_device_key_is_stated_once(path):
    group = path.parent.name
    assert keys(OmegaConf.to_container(OmegaConf.load(path))) == declared(SETTINGS[group])


@pytest.mark.parametrize("path", sorted((CONFIGS / "data").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_data_key_is_stated_once(path):
    """A data set has some of the data keys (tabular or image ones, its own source's)."""
    node = OmegaConf.to_container(OmegaConf.load(path))
    assert keys(node) <= declared(SETTINGS["data"]), keys(node) - declared(SETTINGS["data"])


def test_an_annotated_range_is_what_the_check_enforces(env, capsys):
    from conftest import cli

    for value, ok in (("0", False), ("1", True)):
        code, _, err = cli(capsys, "train", f"trainer.log_every_epochs={value}", "trainer.epochs=1")
        assert (code == 0) == ok, err
        if not ok:
            assert "trainer.log_every_epochs=0 is not valid: it must be a whole number >= 1" in err
