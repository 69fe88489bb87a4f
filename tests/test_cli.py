"""The `dlexp` command: help, train (single and multirun), eval, data, errors, installation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, dlexp
from dlexp.cli import main
from test_train import PAIRS


def runs(env) -> list[Path]:
    return sorted((Path(env["DLEXP_OUTPUTS"]) / "runs").iterdir())


def test_help_lists_commands_and_config_groups(env):
    top = dlexp("--help", env=env)
    assert top.returncode == 0
    for command in ("train", "eval", "data"):
        assert f"  {command} " in top.stdout
    train_help = dlexp("train", "--help", env=env)
    assert train_help.returncode == 0
    assert "dlexp train - train a model" in train_help.stdout
    model_line = next(line for line in train_help.stdout.splitlines() if line.startswith("model: "))
    assert {"ann", "cnn", "autoencoder", "transfer"} <= set(model_line[7:].split(", "))
    opt_line = next(
        line for line in train_help.stdout.splitlines() if line.startswith("optimizer: ")
    )
    assert {"adam", "adamw", "rmsprop", "sgd"} <= set(opt_line[11:].split(", "))
    assert "data: cifar10, emnist, fashion_mnist, iris" in train_help.stdout


def test_default_train_runs_offline_and_says_where(env, tmp_path):
    result = dlexp("train", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "final test/loss" in result.stdout and "test/acc" in result.stdout
    (run,) = runs(env)
    assert f"run saved in {run}" in result.stdout
    assert run.name.endswith("_ann_iris")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/acc"] >= 0.95
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()
    assert "final test/loss" in (run / "train.log").read_text()


@pytest.mark.parametrize(("model", "data"), PAIRS)
def test_cli_train_every_model_and_data_set(model, data, env):
    main(["train", f"model={model}", f"data={data}", "trainer.epochs=1", "data.batch_size=64"])
    (run,) = runs(env)
    assert run.name.endswith(f"_{model}_{data}")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    overrides = (run / ".hydra" / "overrides.yaml").read_text()
    assert f"model={model}" in overrides and "data.batch_size=64" in overrides


def test_eval_prints_the_metrics_training_reported(env):
    trained = dlexp("train", "model=cnn", "data=mnist", "trainer.epochs=1", env=env)
    assert trained.returncode == 0, trained.stderr
    (run,) = runs(env)
    metrics = json.loads((run / "metrics.json").read_text())
    for target in (str(run), str(run / "checkpoints" / "last.pt")):
        result = dlexp("eval", f"run={target}", env=env)
        assert result.returncode == 0, result.stderr
        assert f"test/acc {metrics['test/acc']:.4f}" in result.stdout
        assert f"test/loss {metrics['test/loss']:.4f}" in result.stdout


def test_eval_of_a_missing_run_is_a_clear_error(env, tmp_path):
    result = dlexp("eval", f"run={tmp_path / 'nothing'}", env=env)
    assert result.returncode == 2
    assert "no checkpoint at" in result.stderr and "Traceback" not in result.stderr


def test_multirun_runs_every_job(env):
    main(["train", "-m", "optimizer.lr=0.01,0.001", "trainer.epochs=1"])
    (sweep,) = (Path(env["DLEXP_OUTPUTS"]) / "sweeps").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [j.name for j in jobs] == [
        "0_optimizer.lr=0.01,trainer.epochs=1",
        "1_optimizer.lr=0.001,trainer.epochs=1",
    ]
    lrs = [json.loads((j / "metrics.json").read_text())["lr"] for j in jobs]
    assert lrs == [0.01, 0.001]
    assert (sweep / "multirun.yaml").is_file()


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["train", "model=cnn"], 2, "model=cnn needs images"),
        (["train", "model=cnnn"], 1, "Could not find 'model/cnnn'"),
        (["train", "optimizer.lr=-1"], 2, "optimizer.lr=-1 is not valid"),
        (["train", "trainer.epochs=three"], 2, "trainer.epochs='three' is not valid"),
        (["train", "trainer.epoch=3"], 1, "Key 'epoch' is not in struct"),
        (["train", "trainer.epochs=-1"], 2, "trainer.epochs=-1 is not valid"),
        (["train", "data.batch_size=0"], 2, "data.batch_size=0 is not valid"),
        (["train", "data.val_fraction=1.5"], 2, "data.val_fraction=1.5 is out of range"),
        (["frobnicate"], 2, "unknown command 'frobnicate'"),
        (["eval", "checkpoint=x"], 2, "does not take 'checkpoint=x'"),
    ],
)
def test_bad_input_gives_one_clear_message(args, code, expected, env):
    result = dlexp(*args, env=env)
    assert result.returncode == code
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_data_offline_says_where_and_how(env, tmp_path):
    result = dlexp("train", "data=mnist", env={**env, "DLEXP_DATA": str(tmp_path / "empty")})
    assert result.returncode == 2
    assert str(tmp_path / "empty" / "MNIST" / "raw") in result.stderr
    assert "data.download=true" in result.stderr and "Traceback" not in result.stderr


def test_corrupt_data_file_is_named_and_kept(env, tmp_path):
    import fake_data

    root = fake_data.mnist_root(tmp_path / "data")
    bad = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:50])
    result = dlexp("train", "data=mnist", env={**env, "DLEXP_DATA": str(root)})
    assert result.returncode == 2
    assert f"{bad} is truncated or corrupt" in result.stderr and "Traceback" not in result.stderr
    assert bad.stat().st_size == 50


def test_data_command_lists_presence_and_location(env, tmp_path):
    result = dlexp("data", env=env)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert "present" in lines["mnist"] and "built in" in lines["iris"]
    empty = dlexp("data", f"root={tmp_path}", env=env).stdout
    assert "missing 4 of 4" in next(line for line in empty.splitlines() if "  mnist " in line)
    assert f"expected in    {tmp_path / 'MNIST' / 'raw'}" in empty
    assert "dlexp train data=cifar10 data.download=true" in empty


def test_non_editable_install_runs_from_anywhere(tmp_path):
    """`pip install .` into a fresh venv (reusing this env's torch) ships the configs too."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    here = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir())
    (site / "reuse_torch.pth").write_text(here + "\n")  # torch & co. without a 5 GB reinstall
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(REPO)],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLEXP")}
    env["DLEXP_OUTPUTS"] = str(tmp_path / "out")
    result = subprocess.run(
        [str(venv / "bin" / "dlexp"), "train", "trainer.epochs=2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "test/acc" in result.stdout
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "from dlexp.cli import config_dir; print(config_dir())",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip().startswith(str(site))
