"""Faults: exact resume after SIGKILL, signals, divergence, atomic checkpoints, bad checkpoints."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from conftest import cli, make_cfg, read_scalars
from dlexp import checkpoint
from dlexp.checkpoint import load_checkpoint
from dlexp.cli import main
from dlexp.errors import DlexpError
from dlexp.run import train

# A CNN with dropout and noise augmentation, so that resuming must restore the RNG as well.
LONG_RUN = [
    "model=cnn",
    "data=mnist",
    "model.dropout=0.3",
    "data.augment.noise=0.1",
    "data.batch_size=4",
    "trainer.epochs=4",
    "trainer.log_every_steps=5",
    "trainer.progress=log",
]


HELPER = str(Path(__file__).with_name("signal_at_step.py"))


def signalled(plan: str, args: list[str], env: dict) -> subprocess.CompletedProcess:
    """`dlexp train <args>` in a subprocess that signals itself at known steps (see HELPER)."""
    return subprocess.run(
        [sys.executable, HELPER, plan, "train", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@contextlib.contextmanager
def signal_at(step: int, signum: int):
    """Send this process `signum` just before optimizer step `step` (in-process runs)."""
    count = {"n": 0}

    def hook(optimizer, args, kwargs) -> None:
        count["n"] += 1
        if count["n"] == step:
            os.kill(os.getpid(), signum)

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def test_sigkill_then_resume_matches_an_uninterrupted_run_bit_for_bit(env, tmp_path):
    args = [*LONG_RUN, "trainer.checkpoint_every_steps=7"]
    ref = train(make_cfg(*args), run_dir=tmp_path / "ref")
    total = ref["steps"]

    run = tmp_path / "killed"
    killed = signalled("53:SIGKILL", [*args, f"hydra.run.dir={run}"], env)
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(run / "checkpoints" / "last.pt")["loop"]["step"] == 49 < total

    # TensorBoard orders event files by their names' time in seconds, then process id: resume
    # in a later second, as any real resume is, so that the resumed file sorts after.
    time.sleep(1.0)
    resumed = train(make_cfg(f"trainer.resume={run}", *args))
    assert resumed["steps"] == total
    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert a["loop"]["step"] == b["loop"]["step"] == total
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    new_metrics = json.loads((run / "metrics.json").read_text())
    for key in ("train/loss", "val/loss", "test/loss", "test/acc"):
        assert ref[key] == new_metrics[key]
    # One TensorBoard log in the run folder, every step once, the same curve as the reference.
    steps = [s for s, _ in read_scalars(run)["train/loss_step"]]
    assert steps == sorted(set(steps)) and steps[-1] == total
    assert read_scalars(run)["train/loss_step"] == read_scalars(tmp_path / "ref")["train/loss_step"]
    assert not (Path(env["DLEXP_OUTPUTS"]) / "runs").exists()  # no stray new run folder


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGUSR1, 138)]
)
def test_signal_checkpoints_prints_resume_command_and_resume_finishes(
    sig, code, env, tmp_path, capsys
):
    run = tmp_path / "run"
    with signal_at(20, sig):
        result = cli(capsys, "train", *LONG_RUN, "trainer.epochs=30", f"hydra.run.dir={run}")
    assert result[0] == code, result
    assert f"continue with: dlexp train trainer.resume={run}" in result[2]
    assert ("Ctrl-C again" in result[1]) == (sig == signal.SIGINT)  # only Ctrl-C is pressed twice
    assert json.loads((run / "metrics.json").read_text())["status"] == "interrupted"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["loop"]["step"] == 20

    if sig == signal.SIGUSR1:  # a requeued (pre-empted) job runs the same command again
        again = cli(capsys, "train", *LONG_RUN, "trainer.epochs=3", f"hydra.run.dir={run}")
        assert "continuing the interrupted run" in again[1]
    else:
        again = cli(capsys, "train", f"trainer.resume={run}", "trainer.epochs=3")
    assert again[0] == 0, again
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 3


def test_second_ctrl_c_exits_at_once(env, tmp_path):
    args = [*LONG_RUN, "trainer.epochs=5000", "trainer.checkpoint=false"]
    result = signalled("20:SIGINT,20:SIGINT", [*args, f"hydra.run.dir={tmp_path}"], env)
    assert result.returncode == 130, result.stderr
    assert not (tmp_path / "metrics.json").exists()  # quit at once: nothing more was written


def test_divergence_stops_with_epoch_and_step_and_keeps_last_checkpoint(env, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["data=regression", "optimizer=sgd", "optimizer.lr=1e6", "trainer.epochs=3"]
    code, _, err = cli(capsys, "train", *args, f"hydra.run.dir={run}")
    assert code == 2
    assert "became NaN or infinite at epoch 1, step" in err
    assert "lower learning rate" in err and "Traceback" not in err
    assert json.loads((run / "metrics.json").read_text())["status"] == "diverged"


def test_divergence_after_a_good_epoch_keeps_that_checkpoint(env, tmp_path, monkeypatch):
    from dlexp.tasks.regression import Regression

    real_loss = Regression.loss
    calls = {"n": 0}

    def loss(self, out, y):  # fine for the first epoch (9 training steps), then NaN
        if torch.is_grad_enabled():
            calls["n"] += 1
        value = real_loss(self, out, y)
        return value * float("nan") if calls["n"] > 9 else value

    monkeypatch.setattr(Regression, "loss", loss)
    cfg = make_cfg("data=regression", "trainer.epochs=3", "data.val_fraction=0")
    with pytest.raises(DlexpError, match="at epoch 2, step 10") as err:
        train(cfg, run_dir=tmp_path)
    # No epoch-end checkpoint was due yet (trainer.checkpoint_interval), but the best state,
    # kept in memory, is written when the run diverges.
    best = tmp_path / "checkpoints" / "best.pt"
    assert f"The good checkpoints ({best}) are kept" in str(err.value)
    kept = load_checkpoint(best)
    assert kept["loop"]["epoch"] == 1 and all(
        torch.isfinite(v).all() for v in kept["model"].values()
    )


def test_a_diverging_sweep_job_does_not_stop_the_others(env):
    main(["train", "-m", "data=regression", "optimizer=sgd", "optimizer.lr=1e6,0.01"])
    (sweep,) = (Path(env["DLEXP_OUTPUTS"]) / "sweeps").iterdir()
    statuses = [json.loads(p.read_text())["status"] for p in sorted(sweep.glob("*/metrics.json"))]
    assert statuses == ["diverged", "completed"]


def test_crash_while_writing_a_checkpoint_leaves_the_previous_one(env, tmp_path, monkeypatch):
    train(make_cfg("trainer.epochs=1"), run_dir=tmp_path)
    good = (tmp_path / "checkpoints" / "last.pt").read_bytes()

    def full_disk(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(
        DlexpError, match=r"No space left on device\). The previous checkpoint"
    ) as err:
        train(make_cfg(f"trainer.resume={tmp_path}", "trainer.epochs=2"))
    assert "dlexp train trainer.resume=" in str(err.value)
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == good
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # no half-written leftovers
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["loop"]["epoch"] == 1


def test_checkpoint_cadence_in_steps_and_minutes(env, tmp_path, monkeypatch):
    saved = []
    real = checkpoint.save_checkpoint
    monkeypatch.setattr(
        "dlexp.record.save_checkpoint",
        lambda p, s: (saved.append((p.name, s["loop"]["step"])), real(p, s)),
    )
    train(make_cfg("trainer.epochs=1", "trainer.checkpoint_every_steps=5"), run_dir=tmp_path / "a")
    steps = [s for name, s in saved if name == "last.pt"]
    assert steps == [5, 10, 14]  # 108 samples / batch 8 = 14 steps, then the epoch's end
    saved.clear()
    train(
        make_cfg("trainer.epochs=1", "trainer.checkpoint_every_minutes=0.000001"),
        run_dir=tmp_path / "b",
    )
    assert [s for name, s in saved if name == "last.pt"] == [*range(1, 15), 14]


def test_deterministic_mode_runs_and_repeats(env, tmp_path):
    cfg = ["model=cnn", "data=mnist", "trainer.epochs=1", "trainer.deterministic=true"]
    a = train(make_cfg(*cfg), run_dir=tmp_path / "a")
    b = train(make_cfg(*cfg), run_dir=tmp_path / "b")
    torch.use_deterministic_algorithms(False)
    assert a["test/loss"] == b["test/loss"]


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ['DLEXP_OUTPUTS']) / 'pwned'}",))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("truncated", "is a damaged dlexp checkpoint"),
        ("foreign", "is not a dlexp checkpoint (it lacks the model weights"),
        ("pickled_code", "holds pickled Python objects, which dlexp never loads"),
        ("not_torch", "is not a dlexp checkpoint (it is not a file that torch.save wrote"),
        ("json", "is not a dlexp checkpoint (it is not a file that torch.save wrote"),
    ],
)
def test_bad_checkpoints_are_refused_with_a_clear_message(kind, expected, env, tmp_path, capsys):
    train(make_cfg("trainer.epochs=1"), run_dir=tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    Path(env["DLEXP_OUTPUTS"]).mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif kind == "pickled_code":
        torch.save({"model": _Payload(), "config": ""}, path)
    elif kind == "json":
        path.write_text(json.dumps({"model": [1, 2], "config": "x"}))
    else:
        path.write_text("hello")
    before = path.read_bytes()
    for args in (
        ["eval", f"run={tmp_path / 'run'}"],
        ["train", f"trainer.resume={tmp_path / 'run'}"],
    ):
        code, _, err = cli(capsys, *args)
        assert code == 2, err
        assert f"{path} {expected}" in err and "Traceback" not in err
        assert "weights_only" not in err  # never torch's advice to load unsafely
    if kind == "truncated":  # best.pt is intact: the message says how to go on from it
        best = tmp_path / "run" / "checkpoints" / "best.pt"
        assert f"continue from it with dlexp train trainer.resume={best}" in err
    assert not (Path(env["DLEXP_OUTPUTS"]) / "pwned").exists()  # the payload never ran
    assert path.read_bytes() == before  # the user's file is untouched


def test_checkpoint_of_another_model_is_refused(env, tmp_path, capsys):
    train(make_cfg("trainer.epochs=1"), run_dir=tmp_path / "a")
    train(make_cfg("trainer.epochs=1", "model.hidden=[8]"), run_dir=tmp_path / "b")
    mixed = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    mixed["config"] = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["config"]
    torch.save(mixed, tmp_path / "b" / "checkpoints" / "last.pt")
    code, _, err = cli(capsys, "eval", f"run={tmp_path / 'b'}")
    assert code == 2 and "does not match the model its config describes" in err


def test_resume_refuses_a_changed_model(env, tmp_path, capsys):
    train(make_cfg("trainer.epochs=1"), run_dir=tmp_path / "run")
    code, _, err = cli(capsys, "train", f"trainer.resume={tmp_path / 'run'}", "model=cnn")
    assert code == 2 and "cannot change a run that is being resumed" in err


def test_unwritable_output_folder(env, tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")  # a path under a file is unwritable, even for root
    monkeypatch.setenv("DLEXP_OUTPUTS", str(tmp_path / "afile" / "out"))
    code, _, err = cli(capsys, "train")
    assert code == 2
    assert "is not a writable folder" in err and "Traceback" not in err
