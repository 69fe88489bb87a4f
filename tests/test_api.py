"""dlexp from Python (dlexp.api): compose, train, sweep and load as the command line does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import dlexp
from conftest import REPO, cli, read_scalars
from dlexp.errors import DlexpError


def test_the_api_is_a_few_documented_names():
    assert len(dlexp.__all__) < 12
    readme = (REPO / "README.md").read_text()
    for name in dlexp.__all__:
        if name == "__version__":
            continue
        obj = getattr(dlexp, name)
        assert obj.__doc__ and len(obj.__doc__) > 40, name
        assert f"dlexp.{name}" in readme or f".{name}(" in readme, name
    for method in ("history", "metrics", "model", "dataframe", "config"):
        assert getattr(dlexp.Run, method).__doc__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dlexp.nope  # noqa: B018


def test_config_is_what_the_command_runs(capsys):
    cfg = dlexp.config("model=cnn", "data=mnist", "trainer.epochs=3")
    code, out, _ = cli(
        capsys, "train", "model=cnn", "data=mnist", "trainer.epochs=3", "--cfg", "job"
    )
    assert code == 0
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(OmegaConf.create(out))
    with pytest.raises(
        DlexpError, match=r"trainer\.epochz=3 does not name a setting.*trainer\.epochs"
    ):
        dlexp.config("trainer.epochz=3")


def test_train_returns_the_run_its_history_and_a_model_for_inference(env):
    run = dlexp.train("trainer.epochs=3", "trainer.progress=none", "data.val_fraction=0.2")
    assert run.dir.parent == Path(env["DLEXP_OUTPUTS"]) / "runs" and run.dir.is_dir()
    assert run.metrics == json.loads((run.dir / "metrics.json").read_text())
    assert run.config.trainer.epochs == 3

    history = run.history
    assert list(history["epoch"]) == [1, 2, 3]
    logged = [v for _, v in read_scalars(run.dir)["train/loss"]]
    np.testing.assert_allclose(history["train/loss"], logged)
    assert np.isnan(history["test/acc"][:2]).all()
    assert history["test/acc"][2] == pytest.approx(run.metrics["test/acc"])  # (float32 events)

    frame = run.dataframe()
    assert list(frame.index) == [1, 2, 3]
    np.testing.assert_allclose(frame["val/acc"], history["val/acc"])

    # the model is ready for inference: it scores the test split as training did
    model = run.model()
    assert not model.training
    data = run.data()
    with torch.no_grad():
        predicted = model(data.prepare(data.test.x)).argmax(1)
    test = data.test
    assert (predicted == test.y).float().mean().item() == pytest.approx(run.metrics["test/acc"])
    from dlexp.checkpoint import load_checkpoint

    for which, loaded in (("best", model), ("last", run.model("last"))):
        saved = load_checkpoint(run.dir / "checkpoints" / f"{which}.pt")["model"]
        assert all(torch.equal(saved[k], v) for k, v in loaded.state_dict().items())

    assert run.classes == ["setosa", "versicolor", "virginica"]
    again = dlexp.load(run.dir)
    assert isinstance(again, dlexp.Run) and again.metrics == run.metrics


def test_train_takes_a_changed_config(env):
    cfg = dlexp.config("trainer.progress=none")
    cfg.trainer.epochs = 1
    cfg.optimizer.lr = 0.05
    run = dlexp.train(cfg)
    assert run.metrics["epochs"] == 1 and run.config.optimizer.lr == 0.05
    with pytest.raises(DlexpError, match="override strings"):
        dlexp.train(cfg, "trainer.epochs=2")


def test_sweep_and_its_table(env):
    sweep = dlexp.sweep("optimizer.lr=0.001,0.1", "trainer.epochs=2", "trainer.progress=none")
    assert sweep.dir.parent == Path(env["DLEXP_OUTPUTS"]) / "sweeps"
    assert [r.dir.name.split("_")[0] for r in sweep.runs] == ["0", "1"]
    rows = sweep.table()
    assert [r["overrides"]["optimizer.lr"] for r in sweep.table("train/loss")] == ["0.1", "0.001"]
    assert rows[0]["val/acc"] >= rows[1]["val/acc"]
    frame = sweep.dataframe("train/loss")
    assert list(frame["optimizer.lr"]) == [0.1, 0.001]  # numbers, as the config types them
    assert frame["train/loss"].is_monotonic_increasing
    assert isinstance(dlexp.load(sweep.dir), dlexp.Sweep)

    with pytest.raises(DlexpError, match="did not compose"):
        dlexp.sweep("trainer.epochz=1,2")


def test_load_names_what_it_wants(tmp_path):
    with pytest.raises(DlexpError, match=r"neither a run folder .* nor a sweep folder"):
        dlexp.load(tmp_path)
    with pytest.raises(DlexpError, match="has not finished"):
        _ = dlexp.Run(tmp_path).metrics


def test_import_dlexp_stays_light():
    """`import dlexp` (and so `dlexp --help`) loads neither torch nor hydra."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, dlexp; print('torch' in sys.modules, 'hydra' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["False", "False"]
