"""Bad input, family by family: refused before work with one paragraph (exit 2), nothing changed."""

from __future__ import annotations

import os
import pickle
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fake_data
from conftest import cli, make_cfg
from dlexp.run import train


def refused(capsys, *args: str) -> str:
    """Run `dlexp <args>` in this process; it must exit 2 with one paragraph, no traceback."""
    code, _, err = cli(capsys, *args)
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("dlexp: error: ")
    assert err.strip().count("\n") == 0, err  # one paragraph
    return err


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.grad_clip=-1", "a positive number"),
        ("trainer.grad_clip=None", "or null to turn it off"),
        ("trainer.l1=-0.1", "a number >= 0"),
        ("trainer.early_stopping.patience=0", "a whole number of epochs >= 1"),
        ("trainer.log_every_steps=0", "a whole number >= 1"),
        ("trainer.devices=0", "a whole number >= 1"),
        ("trainer.checkpoint_every_minutes=-1", "a positive number of minutes"),
        ("trainer.precision=fp8", "auto, fast, fp32, bf16 or fp16"),
        ("trainer.compile=maybe", "true or false"),
        ("data.subset=0", "a whole number of samples >= 1"),
        ("data.subset=-5", "a whole number of samples >= 1"),
        ("data.val_fraction=1.5", "at least 0 and below 1"),
        ("data.test_fraction=-0.1", "at least 0 and below 1"),
        ("data.batch_size=2.5", "a whole number >= 1"),
        ("optimizer=sgd optimizer.momentum=1.5", "a number in [0, 1)"),
        ("optimizer.weight_decay=-1", "a number >= 0"),
        ("model.dropout=1", "a probability in [0, 1)"),
        ("seed=abc", "a whole number >= 0"),
        ("model.hidden=abc", "MLP expects a list (a whole number each)"),
        ("model.activation=[1]", "MLP expects a name"),
        ("optimizer.betas=3", "Adam expects a list"),
    ],
)
def test_every_ranged_or_typed_key_is_checked(override, expected, env, capsys):
    err = refused(capsys, "train", *override.split())
    assert f"{override.split()[-1].split('=')[0]}=" in err and expected in err
    runs = Path(env["DLEXP_OUTPUTS"]) / "runs"
    assert not runs.exists() or not list(runs.iterdir())  # no folder left behind


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["trainer.epoch=3"], "did you mean trainer.epochs?"),
        (["+trainer.epoch=3"], "did you mean trainer.epochs?"),
        (["+data.batchsize=3"], "did you mean data.batch_size?"),
        (["model.hiden=[8]"], "did you mean model.hidden?"),
        (["model=cnn", "model.head_size=[8]"], "did you mean model.head?"),
        (["task.nois=0.2", "model=autoencoder", "data=mnist"], "did you mean task.noise?"),
    ],
)
def test_a_key_no_code_reads_is_refused_with_the_closest_real_key(args, expected, env, capsys):
    assert expected in refused(capsys, "train", *args)


def test_a_group_given_null_lists_its_options(env, capsys):
    """(Hydra itself raises a bare ValueError with a traceback.)"""
    err = refused(capsys, "train", "model=null")
    assert "model=null" in err and "ann, autoencoder, cnn" in err


@pytest.mark.parametrize(
    ("model", "data"),
    [
        ("gan", "iris"),
        ("dcgan", "iris"),
        ("autoencoder", "qwerties"),
        ("transfer", "iris"),
        ("cnn_autoencoder", "regression"),
    ],
)
def test_every_model_refuses_data_it_cannot_use(model, data, env, capsys):
    assert f"model={model} needs images" in refused(
        capsys, "train", f"model={model}", f"data={data}"
    )


def test_style_transfer_needs_its_two_images(env, capsys):
    err = refused(capsys, "train", "model=style_transfer", "data=mnist", "model.weights=none")
    assert "needs data=style_images" in err


def test_a_split_that_leaves_too_few_training_samples(env, capsys):
    err = refused(capsys, "train", "data.val_fraction=0.99")
    assert "leave 1 training sample(s)" in err and "at least one of each of its 3 classes" in err
    assert "data.val_fraction=0.99" in err


def _short_labels(root: Path, kind: str) -> tuple[Path, Path]:
    """A data set whose labels are one short of its images, in each on-disk format."""
    if kind == "idx":
        fake_data.mnist_root(root)
        raw = root / "MNIST" / "raw"
        labels = np.frombuffer((raw / "train-labels-idx1-ubyte").read_bytes()[8:], np.uint8)
        fake_data.write_idx(raw / "train-labels-idx1-ubyte", labels[:-1])
        return raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte"
    if kind == "stl10":
        fake_data.stl10_root(root)
        y = root / "stl10_binary" / "train_y.bin"
        y.write_bytes(y.read_bytes()[:-1])
        return root / "stl10_binary" / "train_X.bin", y
    fake_data.cifar10_root(root)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    entry = pickle.loads(batch.read_bytes())
    entry["labels"] = entry["labels"][:-1]
    batch.write_bytes(pickle.dumps(entry))
    return root / "cifar-10-batches-py" / "data_batch_1..5", None


@pytest.mark.parametrize(
    ("kind", "data"), [("idx", "mnist"), ("stl10", "stl10"), ("cifar", "cifar10")]
)
def test_images_and_labels_that_do_not_pair_up(kind, data, env, tmp_path, capsys, monkeypatch):
    images, labels = _short_labels(tmp_path / "data", kind)
    monkeypatch.setenv("DLEXP_DATA", str(tmp_path / "data"))
    err = refused(capsys, "train", f"data={data}")
    assert str(images) in err and (labels is None or str(labels) in err)
    found = re.search(r"holds ([\d,]+) images but .* holds ([\d,]+) labels", err)
    n_images, n_labels = (int(n.replace(",", "")) for n in found.groups())
    assert n_images == n_labels + 1


def test_a_folder_where_a_data_file_should_be(env, tmp_path, capsys, monkeypatch):
    fake_data.mnist_root(tmp_path / "data")
    target = tmp_path / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    target.unlink()
    target.mkdir()
    monkeypatch.setenv("DLEXP_DATA", str(tmp_path / "data"))
    assert f"{target} is a folder" in refused(capsys, "train", "data=mnist")


def test_data_command_says_when_the_root_does_not_exist(env, tmp_path, capsys):
    code, out, _ = cli(capsys, "data", f"root={tmp_path / 'nowhere'}")
    assert code == 0 and f"{tmp_path / 'nowhere'} does not exist" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["sample", "run=x", "seed=abc"], "seed=abc is not valid: it must be a whole number"),
        (["sample", "run=x", "n=0"], "n=0 is not valid: it must be a whole number >= 1"),
        (["eval", "run=x", "ckpt=worst"], "ckpt=worst is not one of the choices: last, best"),
        (["eval", "run=x", "device=gpu"], "device=gpu is not one of the choices"),
        (["report", ".", "plot=maybe"], "plot=maybe is not valid: it must be true or false"),
        (["weights", "resnet18", "download=yes"], "download=yes is not valid"),
    ],
)
def test_every_commands_own_arguments_are_checked(args, expected, env, capsys):
    assert expected in refused(capsys, *args)


def test_a_run_without_best_pt_suggests_the_last(env, tmp_path, capsys):
    train(make_cfg("trainer.epochs=1"), run_dir=tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "best.pt").unlink()
    assert "use ckpt=last" in refused(capsys, "eval", f"run={tmp_path / 'run'}", "ckpt=best")


def test_a_tiny_style_image_is_refused(env, tmp_path, capsys):
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    err = refused(capsys, "stylize", f"style={tmp_path / 'dot.png'}", "model.weights=none")
    assert "is 1x1 pixels: too small" in err


def test_a_full_disk_is_said_once_and_the_checkpoint_kept(env, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    train(make_cfg("trainer.epochs=1"), run_dir=run)
    kept = (run / "checkpoints" / "last.pt").read_bytes()
    monkeypatch.setattr("dlexp.run.shutil.disk_usage", lambda path: type("U", (), {"free": 1024})())
    err = refused(capsys, "train", f"trainer.resume={run}", "trainer.epochs=2")
    assert f"the disk holding {run} is full" in err and "Its checkpoints are intact" in err
    assert (run / "checkpoints" / "last.pt").read_bytes() == kept
    monkeypatch.undo()

    def full(obj, f):  # what torch.save raises when the disk fills mid-write
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr("dlexp.checkpoint.torch.save", full)
    err = refused(capsys, "train", f"trainer.resume={run}", "trainer.epochs=2")
    assert "the disk is probably full" in err and "The previous checkpoint there is intact" in err
    monkeypatch.undo()
    assert (run / "checkpoints" / "last.pt").read_bytes() == kept


def test_an_unquoted_path_gets_a_hint_to_quote_it(env, capsys):
    err = refused(capsys, "train", "trainer.resume=/tmp/out ☃ dir/run")
    assert "must be quoted" in err and "\"trainer.resume='/tmp/out ☃ dir/run'\"" in err


def test_the_printed_resume_command_works_for_any_path(env, tmp_path, capsys, monkeypatch):
    """A run under a path with spaces and non-ASCII characters, stopped with SIGINT: the
    command it prints, pasted into bash, finishes it."""
    from test_faults import signal_at

    outputs = tmp_path / "my runs ☃ été"
    monkeypatch.setenv("DLEXP_OUTPUTS", str(outputs))
    environ = {**env, "DLEXP_OUTPUTS": str(outputs)}
    environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environ['PATH']}"
    with signal_at(20, signal.SIGINT):
        code, _, err = cli(capsys, "train", "trainer.epochs=30", "trainer.progress=log")
    stopped = subprocess.CompletedProcess([], code, "", err)
    assert stopped.returncode == 130, stopped.stderr
    command = stopped.stderr.rsplit("continue with: ", 1)[1].strip()
    assert command.startswith("dlexp train ")
    resumed = subprocess.run(
        ["bash", "-c", command], env=environ, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    (run,) = (outputs / "runs").iterdir()
    assert f"run saved in {run}" in resumed.stdout
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["loop"]["epoch"] == 30


class _Touch:
    """A pickle that, loaded, creates the file it names."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("iris") / "run"
    train(make_cfg("trainer.epochs=1", "trainer.progress=none"), run_dir=run)
    return run


@pytest.mark.parametrize("kind", ["torch.load", "builtins.open", "os.system", "subprocess.run"])
def test_a_stored_config_that_names_code_is_refused_and_nothing_runs(
    kind, iris_run, env, tmp_path, capsys
):
    """A checkpoint whose stored config holds a nested `_target_` (where the model's activation
    name should be) is refused by every command that loads runs; the marker proves nothing ran."""
    import yaml

    marker, victim = tmp_path / "ran", tmp_path / "victim.txt"
    victim.write_text("precious")
    payload = tmp_path / "payload.pkl"
    payload.write_bytes(pickle.dumps(_Touch(marker)))
    nested = {
        "torch.load": {"_target_": "torch.load", "f": str(payload), "weights_only": False},
        "builtins.open": {"_target_": "builtins.open", "_args_": [str(victim), "w"]},
        "os.system": {"_target_": "os.system", "command": f"touch '{marker}'"},
        "subprocess.run": {"_target_": "subprocess.run", "args": ["touch", str(marker)]},
    }[kind]
    state = torch.load(iris_run / "checkpoints" / "last.pt", weights_only=True)
    cfg = yaml.safe_load(state["config"])
    cfg["model"]["activation"] = nested
    crafted = tmp_path / "crafted.pt"
    torch.save({**state, "config": yaml.safe_dump(cfg)}, crafted)
    for args in (
        ["eval", f"run={crafted}"],
        ["sample", f"run={crafted}", f"out={tmp_path / 'grid.png'}"],
        ["train", f"trainer.resume={crafted}"],
        ["train", "model=gan", "data=mnist", f"task.quality_from={crafted}", "trainer.epochs=1"],
    ):
        err = refused(capsys, *args)
        assert f"model.activation._target_='{kind}' is not something dlexp builds" in err
    assert not marker.exists() and victim.read_text() == "precious"  # nothing ran
    assert not (tmp_path / "grid.png").exists()
    runs = Path(env["DLEXP_OUTPUTS"]) / "runs"
    assert not runs.exists() or not list(runs.iterdir())  # no run folder left behind


@pytest.mark.parametrize("target", ["os.system", "torch.optim.optimizer.os.system", "torch.load"])
def test_a_command_line_target_outside_what_dlexp_builds_is_refused(target, env, capsys):
    err = refused(capsys, "train", f"model._target_={target}")
    assert f"model._target_='{target}' is not something dlexp builds" in err


def test_a_sweep_jobs_folder_given_unquoted_gets_the_quoted_command(env, tmp_path, capsys):
    """Job folders are named by their overrides (`0_optimizer.lr=0.1`): Hydra cannot read such
    a path unquoted; dlexp names the override and prints the form that works."""
    job = tmp_path / "0_optimizer.lr=0.1,seed=1"
    train(make_cfg("trainer.epochs=1", "trainer.progress=none"), run_dir=job)
    err = refused(capsys, "train", f"trainer.resume={job}")
    quoted = f"\"trainer.resume='{job}'\""
    assert quoted in err
    code, out, err = cli(capsys, "train", *shlex.split(quoted))
    assert code == 0 and "is complete (1 of 1 epochs)" in out + err
    code, out, err = cli(capsys, "eval", f"run={job}")  # (dlexp's own commands take it as is)
    assert code == 0 and "test/acc" in out + err


def test_a_huge_grid_is_refused_with_its_size_before_anything_is_composed(env, capsys):
    err = refused(capsys, "train", "-m", "seed=range(1000)", "data.batch_size=range(1,1001)")
    assert "this sweep has 1,000,000 jobs, more than dlexp runs in one sweep" in err
    assert not (Path(env["DLEXP_OUTPUTS"]) / "sweeps").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["data.fold=2"], "data.fold=2 picks a validation fold, but data.folds is not set"),
        (
            ["optimizer=sgd", "optimizer.nesterov=true", "optimizer.momentum=0"],
            "optimizer.nesterov=true needs momentum and no dampening",
        ),
    ],
)
def test_settings_that_contradict_each_other_are_one_paragraph(args, expected, env, capsys):
    assert expected in refused(capsys, "train", *args)
    for launcher in ("basic", "batched"):  # a sweep's job fails with the same words
        code, _, err = cli(capsys, "train", "-m", *args, "seed=1,2", f"hydra/launcher={launcher}")
        assert code == 1 and expected in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"format": True}, "has checkpoint format True"),
        ({"loop.epoch": -5}, "its loop.epoch is -5"),
        ({"loop.stale": "x"}, "its loop.stale is 'x'"),
        ({"meta.num_classes": "three"}, "its data description (meta) is"),
        ({"meta.input_shape": [0]}, "input shape [0]"),
        ({"config": "{{{ not yaml"}, "its stored config is not a dlexp config"),
        ({"config": "[1, 2]"}, "its stored config is not a dlexp config"),
    ],
    ids=lambda v: str(v)[:24],
)
def test_a_checkpoint_with_altered_values_is_refused_not_trusted(
    change, expected, iris_run, env, tmp_path, capsys
):
    state = torch.load(iris_run / "checkpoints" / "last.pt", weights_only=True)
    for key, value in change.items():
        *parents, leaf = key.split(".")
        node = state
        for name in parents:
            node = node[name]
        node[leaf] = value
    crafted = tmp_path / "crafted.pt"
    torch.save(state, crafted)
    for args in (["eval", f"run={crafted}"], ["train", f"trainer.resume={crafted}"]):
        err = refused(capsys, *args)
        assert str(crafted) in err and expected in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "is empty"),
        ("a,b,label\n", "holds a header row but no data rows"),
        ("a,a,c,label\n1,2,3,x\n4,5,6,y\n", "the header names 'a' more than once"),
        ("a,b,label\n1,2,x\n3,4,\n", "line 3: the target column 'label' is ''"),
        ("a,b,label\n1,2,x\n3,4,nan\n", "line 3: the target column 'label' is 'nan'"),
        ("a,b,label\n1,nan,x\n3,4,y\n", "line 2, column 'b': 'nan' is not a finite number"),
        ("a,b,label\n1,1e300,x\n3,4,y\n", "line 2, column 'b': '1e300' is not a finite number"),
        ("a,b,label\n1,2,x\n3,4,x\n5,6,x\n", "has one class ('x') in its target"),
    ],
    ids=["empty", "header-only", "duplicate", "blank-target", "nan-target", "nan", "huge", "one"],
)
def test_a_csv_that_cannot_be_right_is_one_paragraph(text, expected, env, tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text(text)
    args = ["data=csv", f"data.source.path={table}", "data.source.target=label"]
    assert expected in refused(
        capsys, "train", *args, "data.test_fraction=0", "data.val_fraction=0"
    )


def test_an_image_too_large_to_decode_is_named(env, tmp_path, capsys):
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "pics" / name).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "pics" / name / "0.png")
    huge = tmp_path / "pics" / "a" / "huge.png"
    Image.new("1", (20000, 20000)).save(huge)  # (1 bit a pixel: 50 KB on disk)
    args = ["model=cnn", "data=image_folder", f"data.source.path={tmp_path / 'pics'}"]
    assert f"{huge} is larger than dlexp decodes" in refused(capsys, "train", *args)
    assert "data.source.size=0 is not valid" in refused(
        capsys, "train", *args, "data.source.size=0"
    )


def test_a_model_too_large_for_memory_is_refused_with_its_size(env, capsys):
    err = refused(capsys, "train", "model.hidden=[200000,200000]")
    assert "does not fit in memory (149.0 GB for one of its tensors)" in err
    assert "model.hidden=[200000, 200000]" in err


def test_an_interval_without_a_searching_sweeper_is_one_paragraph(env, capsys):
    err = refused(capsys, "train", "-m", "optimizer.lr=interval(0.001,0.1)")
    assert "an interval is a range to search" in err and "hydra/sweeper=optuna" in err


def test_an_experiment_file_from_elsewhere_that_names_code_is_refused(env, tmp_path, capsys):
    """The same rule for a user's own experiment file (-cd): a nested _target_ that dlexp does
    not build is refused before anything is built."""
    marker = tmp_path / "ran"
    extra = tmp_path / "configs" / "experiment"
    extra.mkdir(parents=True)
    (extra / "evil.yaml").write_text(
        "# @package _global_\n"
        "model:\n  activation:\n    _target_: subprocess.run\n"
        f"    args: [touch, '{marker}']\n"
    )
    err = refused(capsys, "train", "-cd", str(tmp_path / "configs"), "experiment=evil")
    assert "model.activation._target_='subprocess.run' is not something dlexp builds" in err
    assert not marker.exists()
