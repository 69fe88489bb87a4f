"""The batched launcher's JobComposer (a sweep job's config derived from the previous full
composition when only plain values change) against Hydra's own composition of the same
overrides: every job's config, Hydra's node included, is the same."""

from __future__ import annotations

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf

from dlexp.cli import config_dir
from dlexp.launcher import JobComposer

JOBS = [  # as a sweeper hands them over: values, then a group, then values again
    ["optimizer.lr=0.1", "seed=1", "model.hidden=[8,8]"],
    ["optimizer.lr=0.01", "seed=1", "model.hidden=[8,8]"],
    ["optimizer.lr=0.01", "seed=2", "model.hidden=[4]"],
    ["optimizer=sgd", "seed=1", "model.hidden=[4]"],
    ["optimizer=sgd", "seed=3", "model.hidden=[4]"],
    ["optimizer.lr=0.5", "seed=3", "trainer.early_stopping.patience=2"],
    ["optimizer.lr=0.5", "seed=3", "+trainer.note=x"],
    ["optimizer.lr=0.5", "seed=3", "data=qwerties"],
    ["optimizer.lr=0.25", "seed=4", "data=qwerties"],
]


@pytest.mark.parametrize("sweep", [[], ["experiment=ann_lr_sweep"]], ids=["default", "experiment"])
def test_job_configs_equal_hydras_own_composition(sweep):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration(
            "train", overrides=[*sweep, "hydra/launcher=batched"], run_mode=RunMode.MULTIRUN
        )
        composed = []  # the jobs Hydra composed in full for the composer

        def full(master, overrides):
            composed.append(overrides[len(sweep) :])
            return loader.load_sweep_config(master, overrides)

        composer = JobComposer(full)
        for overrides in JOBS:
            ours = composer.load_sweep_config(master, [*sweep, *overrides])
            theirs = loader.load_sweep_config(master, [*sweep, *overrides])
            assert OmegaConf.to_container(ours) == OmegaConf.to_container(theirs), overrides
        # Only jobs whose change is more than plain values were composed in full.
        assert JOBS[1] not in composed and JOBS[4] not in composed and JOBS[8] not in composed
        assert JOBS[3] in composed and JOBS[7] in composed
