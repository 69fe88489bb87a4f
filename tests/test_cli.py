"""The `dlexp` command: help, train (single and multirun), eval, data, errors, installation."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli, dlexp, fresh_venv
from dlexp.cli import main
from dlexp.record import read_history


def runs(env) -> list[Path]:
    return sorted((Path(env["DLEXP_OUTPUTS"]) / "runs").iterdir())


def test_help_lists_commands_and_config_groups(env, capsys):
    code, top, _ = cli(capsys, "--help")
    assert code == 0
    for command in ("train", "eval", "data"):
        assert f"  {command} " in top
    code, train_help, _ = cli(capsys, "train", "--help")
    assert code == 0
    assert "dlexp train - train a model" in train_help
    model_line = next(line for line in train_help.splitlines() if line.startswith("model: "))
    assert {"ann", "cnn", "autoencoder", "transfer"} <= set(model_line[7:].split(", "))
    opt_line = next(line for line in train_help.splitlines() if line.startswith("optimizer: "))
    assert {"adam", "adamw", "rmsprop", "sgd"} <= set(opt_line[11:].split(", "))
    task_line = next(line for line in train_help.splitlines() if line.startswith("task: "))
    assert set(task_line[6:].split(", ")) == {
        "adversarial",
        "classification",
        "reconstruct",
        "regression",
        "stylize",
    }
    assert (
        "data: alternating, bars, cifar10, csv, doughnuts, emnist, fashion_mnist, gaussian_blobs, "
        "gaussian_classes, gaussian_positions, gaussian_widths, image_folder" in train_help
    )


def test_default_train_runs_offline_and_says_where(env, tmp_path):
    """The real console command (its exit skips the interpreter's teardown: all is flushed)."""
    result = dlexp("train", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "final test/loss" in result.stdout and "test/acc" in result.stdout
    (run,) = runs(env)
    assert f"run saved in {run}" in result.stdout
    assert run.name.startswith("ann_iris_")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/acc"] >= 0.9
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()
    assert "final test/loss" in (run / "train.log").read_text()
    assert json.loads((run / "run.json").read_text())["command"] == "dlexp train"
    assert not (run / "run.lock").exists()


def test_cli_run_folder_is_named_by_model_and_data_and_records_overrides(env, capsys):
    code, _, err = cli(
        capsys, "train", "model=cnn", "data=mnist", "trainer.epochs=1", "data.batch_size=64"
    )
    assert code == 0, err
    (run,) = runs(env)
    assert run.name.startswith("cnn_mnist_")
    # the name --help promises: <model>_<data>_<date>_<time>-<microseconds>
    _, train_help, _ = cli(capsys, "train", "--help")
    assert "outputs/runs/<model>_<data>_<date>_<time>-<microseconds>/" in train_help
    assert re.fullmatch(r"cnn_mnist_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{6}", run.name), run.name
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"
    overrides = (run / ".hydra" / "overrides.yaml").read_text()
    assert "model=cnn" in overrides and "data.batch_size=64" in overrides


def test_eval_prints_the_metrics_training_reported(env, capsys):
    assert cli(capsys, "train", "model=cnn", "data=mnist", "trainer.epochs=1")[0] == 0
    (run,) = runs(env)
    metrics = json.loads((run / "metrics.json").read_text())
    for target in (str(run), str(run / "checkpoints" / "last.pt")):
        code, out, err = cli(capsys, "eval", f"run={target}")
        assert code == 0, err
        assert f"test/acc {metrics['test/acc']:.4f}" in out
        assert f"test/loss {metrics['test/loss']:.4f}" in out


def test_eval_of_a_missing_run_is_a_clear_error(env, tmp_path, capsys):
    code, _, err = cli(capsys, "eval", f"run={tmp_path / 'nothing'}")
    assert code == 2
    assert "no checkpoint at" in err and "Traceback" not in err


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
        (["train", "trainer.epoch=3"], 2, "did you mean trainer.epochs?"),
        (["train", "+trainer.epoch=3"], 2, "did you mean trainer.epochs?"),
        (["train", "model.hiden=[8]"], 2, "did you mean model.hidden?"),
        (["train", "trainer.epochs=-1"], 2, "trainer.epochs=-1 is not valid"),
        (["train", "data.batch_size=0"], 2, "data.batch_size=0 is not valid"),
        (["train", "data.val_fraction=1.5"], 2, "data.val_fraction=1.5 is not valid"),
        (["frobnicate"], 2, "unknown command 'frobnicate'"),
        (["eval", "checkpoint=x"], 2, "does not take 'checkpoint=x'"),
    ],
)
def test_bad_input_gives_one_clear_message(args, code, expected, env, capsys):
    result = cli(capsys, *args)
    assert result[0] == code
    assert expected in result[2]
    assert "Traceback" not in result[2]
    assert not (Path(env["DLEXP_OUTPUTS"]) / "runs").exists() or not runs(env)


def test_missing_data_offline_says_where_and_how(env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DLEXP_DATA", str(tmp_path / "empty"))
    code, _, err = cli(capsys, "train", "data=mnist")
    assert code == 2
    assert str(tmp_path / "empty" / "MNIST" / "raw") in err
    assert "data.download=true" in err and "Traceback" not in err


def test_corrupt_data_file_is_named_and_kept(env, tmp_path, capsys, monkeypatch):
    import fake_data

    root = fake_data.mnist_root(tmp_path / "data")
    bad = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:50])
    monkeypatch.setenv("DLEXP_DATA", str(root))
    code, _, err = cli(capsys, "train", "data=mnist")
    assert code == 2
    assert f"{bad} is truncated or corrupt" in err and "Traceback" not in err
    assert bad.stat().st_size == 50


def test_data_command_lists_presence_and_location(env, tmp_path, capsys):
    code, out, err = cli(capsys, "data")
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "present" in lines["mnist"] and "built in" in lines["iris"]
    empty = cli(capsys, "data", f"root={tmp_path}")[1]
    assert "missing 4 of 4" in next(line for line in empty.splitlines() if "  mnist " in line)
    assert f"expected in    {tmp_path / 'MNIST' / 'raw'}" in empty
    assert "dlexp train data=cifar10 data.download=true" in empty


@pytest.mark.slow  # a build, a virtual environment and a wheel install (~15 s)
def test_the_built_wheel_installs_runs_from_anywhere_and_carries_its_licences(tmp_path):
    """The sdist and wheel that `python -m build` makes carry LICENSE and the wine data's
    attribution; the wheel, installed into a fresh venv (reusing this env's torch), ships the
    configs, runs from any folder and says its licence to `pip show`."""
    import tarfile
    import zipfile

    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    wheel, sdist = next(dist.glob("*.whl")), next(dist.glob("*.tar.gz"))
    with zipfile.ZipFile(wheel) as whl, tarfile.open(sdist) as tar:
        in_wheel = whl.namelist()
        in_sdist = [name.partition("/")[2] for name in tar.getnames()]
    for names in (in_wheel, in_sdist):
        assert any(n.endswith("LICENSE") for n in names)
        assert "dlexp/data/winequality-red.README.md" in names
        assert "dlexp/data/winequality-red.csv" in names
    attribution = (REPO / "dlexp/data/winequality-red.README.md").read_text()
    assert "Cortez" in attribution and "CC BY 4.0" in attribution

    venv = fresh_venv(tmp_path, str(wheel)).parent.parent
    site = next(venv.glob("lib/python*/site-packages"))
    show = subprocess.run(
        [str(venv / "bin" / "pip"), "show", "dlexp"], capture_output=True, text=True
    )
    assert "License: MIT" in show.stdout.splitlines()
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
            "from dlexp.cli import config_dir; from dlexp.data.tabular import WINE_CSV; "
            "print(config_dir()); print(WINE_CSV.is_file(), WINE_CSV)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    configs, wine = where.stdout.strip().splitlines()
    assert configs.startswith(str(site))
    assert wine.startswith(f"True {site}")  # the wine CSV ships inside the package


def complete(lines: list[str], env: dict, cwd: Path | None = None) -> list[list[str]]:
    """What bash offers after `eval "$(dlexp -sc install=bash)"` for each line + Tab (one bash
    for all), each word as readline inserts it (a trailing space: the word is finished)."""
    script = 'eval "$(dlexp -sc install=bash)"; '
    for line in lines:
        script += (
            f'COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}; read -ra COMP_WORDS <<< "$COMP_LINE"; '
            '[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=(""); '
            "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); "
            '_dlexp_completion; printf "%s|" "${COMPREPLY[@]}"; echo; '
        )
    path = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    out = subprocess.run(
        ["bash", "-c", script],
        env={**env, "PATH": path},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return [[w for w in line.split("|") if w] for line in out.stdout.splitlines()]


def test_shell_completion_in_a_real_bash(env, tmp_path):
    run = tmp_path / "outputs" / "runs" / "ann_iris_1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").touch()
    checkpoints = "dlexp eval run=outputs/runs/ann_iris_1/checkpoints/"
    offered = complete(
        [
            "dlexp train model=",
            "dlexp tr",
            "dlexp eval ",
            "dlexp eval run=out",
            "dlexp eval run=outputs/runs/",
            checkpoints,
            "dlexp eval run=x ckpt=b",
        ],
        env,
        tmp_path,
    )
    # Hydra's words for train, a finished value with its space
    assert {"model=cnn ", "model=ann ", "model=transfer "} <= set(offered[0])
    assert offered[1] == ["train "]  # a command gets its space (a second Tab: not `trainer`)
    # eval's keys (no space: a value follows), a run folder step by step, its checkpoints
    assert offered[2] == ["run=", "ckpt=", "device="]
    assert offered[3] == ["run=outputs/"]
    assert offered[4] == ["run=outputs/runs/ann_iris_1/"]
    assert offered[5] == ["run=outputs/runs/ann_iris_1/checkpoints/best.pt "]
    assert offered[6] == ["ckpt=best "]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("dlexp train optimizer=r", {"optimizer=rmsprop"}),
        ("dlexp train trainer.ep", {"trainer.epochs="}),
        ("dlexp ev", {"eval"}),
        ("dlexp ", {"train", "eval", "data", "report", "sample", "stylize", "weights"}),
        ("dlexp sample run=r n=4 ", {"out=", "seed=", "prompt=", "temperature="}),  # not yet given
        ("dlexp data ro", {"root="}),
        ("dlexp report sweep plot=", {"plot=true", "plot=false"}),
        ("dlexp weights resnet1", {"resnet18", "resnet101", "resnet152"}),
        ("dlexp weights resnet18 weights=", {"weights=DEFAULT", "weights=IMAGENET1K_V1"}),
    ],
)
def test_shell_completion_queries(line, expected, env, capsys, monkeypatch):
    """What the installed script asks (`dlexp -sc query=bash` with COMP_LINE set)."""
    monkeypatch.setenv("COMP_LINE", line)
    code, out, _ = cli(capsys, "-sc", "query=bash")
    assert code == 0 and set(out.split()) == expected


def test_report_completes_sweep_folders_and_their_metrics(env, tmp_path, capsys, monkeypatch):
    job = tmp_path / "sweeps" / "2026-12-05_10-00-00-000000" / "0_optimizer.lr=0.1"
    job.mkdir(parents=True)
    (job / "metrics.json").write_text('{"val/acc": 0.9, "test/acc": 0.8, "status": "completed"}')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMP_LINE", "dlexp report sw")
    assert cli(capsys, "-sc", "query=fish")[1].splitlines() == ["sweeps/"]  # fish: one a line
    monkeypatch.setenv("COMP_LINE", f"dlexp report {job.parent.relative_to(tmp_path)} metric=")
    assert cli(capsys, "-sc", "query=bash")[1].split() == ["metric=val/acc", "metric=test/acc"]


@pytest.mark.parametrize("command", [["-sc"], ["train", "-sc"]])
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_both_install_forms_print_dlexps_script(command, shell, capsys):
    code, out, _ = cli(capsys, *command, f"install={shell}")
    assert code == 0
    assert ("__dlexp_complete" if shell == "fish" else "_dlexp_completion") in out
    assert "hydra_bash_completion" not in out


@pytest.mark.parametrize(
    ("group", "option", "extra"),
    [
        ("sweeper", "optuna", "optuna"),
        ("launcher", "joblib", "joblib"),
        ("launcher", "submitit_slurm", "slurm"),
    ],
)
def test_a_missing_plugin_names_the_extra_to_install(group, option, extra):
    """What dlexp says for Hydra's "Could not find" when the plugin is not installed (it is in
    the test environment, so Hydra's text is given here as Hydra prints it)."""
    from dlexp.hydra_app import composition_error

    hydra_text = (
        f"In 'train': Could not find 'hydra/{group}/{option}'\n\nAvailable options in "
        f"'hydra/{group}':\n\tbasic\nConfig search path:\n\tprovider=hydra, path=pkg://hydra.conf\n"
    )
    message = composition_error(hydra_text, [f"hydra/{group}={option}"], "unused")
    assert message.startswith("dlexp: error: ") and f"pip install 'dlexp[{extra}]'" in message


def test_a_terminal_hears_at_once_that_train_is_loading(env, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = cli(capsys, "train", "trainer.epochs=1")
    assert code == 0 and err.startswith("dlexp: loading PyTorch and composing the config")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # not in logs and pipes
    code, _, err = cli(capsys, "train", "trainer.epochs=1")
    assert code == 0 and "loading PyTorch" not in err


def test_epoch_lines_come_about_50_times_a_run_and_the_bar_ends_full(env, capsys):
    """A 1,000-epoch course run takes a fraction of a second: a line for each epoch would be
    a wall of text (the history is in TensorBoard's events); the bar still ends at 1000/1000."""
    args = ["train", "experiment=ann_lr_sweep", "trainer.epochs=100"]
    code, out, err = cli(capsys, *args, "trainer.progress=log")
    assert code == 0, err
    shown = [
        int(line.split()[1].split("/")[0]) for line in out.splitlines() if line.startswith("epoch ")
    ]
    assert shown == [1, *range(2, 101, 2)]  # the first, then every 100 // 50 = 2nd
    (run,) = runs(env)
    assert (run / "train.log").read_text().count("  train/loss ") == 51
    assert [row["epoch"] for row in read_history(run)] == list(range(1, 101))
    code, out, err = cli(capsys, *args, "trainer.progress=bar", "trainer.epochs=1000")
    assert code == 0, err
    assert "1000/1000" in out  # rich draws the finished bar when it stops


def test_output_cut_short_by_a_pipe_is_no_traceback(env):
    """`dlexp ... | head`: Python's BrokenPipeError, not a traceback, when head stops reading."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(
        # (`true` exits at once: dlexp writes into a pipe nobody reads)
        ["bash", "-c", "dlexp sample --help | true; echo ${PIPESTATUS[0]}"],
        env={**env, "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stderr == "" and result.stdout.strip() == "141"
