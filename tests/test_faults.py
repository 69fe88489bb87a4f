"""Faults: exact resume after SIGKILL, signals, divergence, atomic checkpoints, bad checkpoints."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import dlexp, make_cfg, read_scalars
from dlexp import checkpoint
from dlexp.checkpoint import load_checkpoint
from dlexp.cli import main
from dlexp.errors import DlexpError
from dlexp.train import train

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


def start(args: list[str], env: dict, run: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dlexp", "train", *args, f"hydra.run.dir={run}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_sigkill_then_resume_matches_an_uninterrupted_run_bit_for_bit(env, tmp_path):
    args = [*LONG_RUN, "trainer.checkpoint_every_steps=7"]
    ref = dlexp("train", *args, f"hydra.run.dir={tmp_path / 'ref'}", env=env)
    assert ref.returncode == 0, ref.stderr
    total = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")["step"]

    run = tmp_path / "killed"
    for delay in (random.uniform(0.1, 0.8), 0.05, 0.0):  # retry shorter if it finished first
        proc = start(args, env, run)
        wait_for(run / "checkpoints" / "last.pt", proc)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
        if killed_at < total:
            break
    assert 0 < killed_at < total

    resumed = dlexp("train", f"trainer.resume={run}", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch" in resumed.stdout and f"run saved in {run}" in resumed.stdout
    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == total
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    ref_metrics = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    new_metrics = json.loads((run / "metrics.json").read_text())
    for key in ("train/loss", "val/loss", "test/loss", "test/acc"):
        assert ref_metrics[key] == new_metrics[key]
    # One TensorBoard log in the run folder, every step once, the same curve as the reference.
    steps = [s for s, _ in read_scalars(run)["train/loss_step"]]
    assert steps == sorted(set(steps)) and steps[-1] == total
    assert read_scalars(run)["train/loss_step"] == read_scalars(tmp_path / "ref")["train/loss_step"]
    assert not (Path(env["DLEXP_OUTPUTS"]) / "runs").exists()  # no stray new run folder


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGUSR1, 138)]
)
def test_signal_checkpoints_prints_resume_command_and_resume_finishes(sig, code, env, tmp_path):
    run = tmp_path / "run"
    proc = start([*LONG_RUN, "trainer.epochs=30"], env, run)
    wait_for(run / "checkpoints" / "last.pt", proc)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"continue with: dlexp train trainer.resume={run}" in err
    assert json.loads((run / "metrics.json").read_text())["status"] == "interrupted"
    stopped = load_checkpoint(run / "checkpoints" / "last.pt")
    assert stopped["step"] > 0

    if sig == signal.SIGUSR1:  # a requeued (pre-empted) job runs the same command again
        again = dlexp("train", *LONG_RUN, "trainer.epochs=3", f"hydra.run.dir={run}", env=env)
        assert "continuing the interrupted run" in again.stdout
    else:
        again = dlexp("train", f"trainer.resume={run}", "trainer.epochs=3", env=env)
    assert again.returncode == 0, again.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 3


def test_second_ctrl_c_exits_at_once(env, tmp_path):
    run = tmp_path / "run"
    proc = start([*LONG_RUN, "trainer.epochs=5000", "trainer.checkpoint=false"], env, run)
    deadline = time.monotonic() + 120
    while "epoch 1/" not in (
        (run / "train.log").read_text() if (run / "train.log").exists() else ""
    ):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130


def test_divergence_stops_with_epoch_and_step_and_keeps_last_checkpoint(env, tmp_path):
    run = tmp_path / "run"
    args = ["data=regression", "optimizer=sgd", "optimizer.lr=1e6", "trainer.epochs=3"]
    result = dlexp("train", *args, f"hydra.run.dir={run}", env=env)
    assert result.returncode == 2
    assert "became NaN or infinite at epoch 1, step" in result.stderr
    assert "lower learning rate" in result.stderr and "Traceback" not in result.stderr
    assert json.loads((run / "metrics.json").read_text())["status"] == "diverged"


def test_divergence_after_a_good_epoch_keeps_that_checkpoint(env, tmp_path, monkeypatch):
    from dlexp.tasks.regression import Regression

    real_loss = Regression.loss
    calls = {"n": 0}

    def loss(self, out, y):  # fine for the first epoch (9 steps), then NaN
        calls["n"] += 1
        value = real_loss(self, out, y)
        return value * float("nan") if calls["n"] > 9 else value

    monkeypatch.setattr(Regression, "loss", loss)
    cfg = make_cfg("data=regression", "trainer.epochs=3", "data.val_fraction=0")
    with pytest.raises(DlexpError, match="at epoch 2, step 10") as err:
        train(cfg, run_dir=tmp_path)
    assert str(tmp_path / "checkpoints" / "last.pt") in str(err.value)
    kept = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values())


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
        train(make_cfg("trainer.epochs=2"), run_dir=tmp_path)
    assert "dlexp train trainer.resume=" in str(err.value)
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == good
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # no half-written leftovers
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1


def test_checkpoint_cadence_in_steps_and_minutes(env, tmp_path, monkeypatch):
    saved = []
    real = checkpoint.save_checkpoint
    monkeypatch.setattr(
        "dlexp.trainer.save_checkpoint",
        lambda p, s: (saved.append((p.name, s["step"])), real(p, s)),
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


@pytest.mark.parametrize("kind", ["truncated", "foreign", "pickled_code", "not_torch"])
def test_bad_checkpoints_are_refused_with_a_clear_message(kind, env, tmp_path):
    train(make_cfg("trainer.epochs=1"), run_dir=tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    Path(env["DLEXP_OUTPUTS"]).mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif kind == "pickled_code":
        torch.save({"model": _Payload(), "config": ""}, path)
    else:
        path.write_text("hello")
    before = path.read_bytes()
    for args in (
        ["eval", f"run={tmp_path / 'run'}"],
        ["train", f"trainer.resume={tmp_path / 'run'}"],
    ):
        result = dlexp(*args, env=env)
        assert result.returncode == 2, result.stderr
        assert str(path) in result.stderr and "Traceback" not in result.stderr
        assert (
            "not a readable dlexp checkpoint" in result.stderr
            or "not a dlexp checkpoint" in result.stderr
        )
    assert not (Path(env["DLEXP_OUTPUTS"]) / "pwned").exists()  # the payload never ran
    assert path.read_bytes() == before  # the user's file is untouched


def test_checkpoint_of_another_model_is_refused(env, tmp_path):
    train(make_cfg("trainer.epochs=1"), run_dir=tmp_path / "a")
    train(make_cfg("trainer.epochs=1", "model.hidden=[8]"), run_dir=tmp_path / "b")
    mixed = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    mixed["config"] = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["config"]
    torch.save(mixed, tmp_path / "b" / "checkpoints" / "last.pt")
    result = dlexp("eval", f"run={tmp_path / 'b'}", env=env)
    assert (
        result.returncode == 2 and "does not match the model its config describes" in result.stderr
    )


def test_resume_refuses_a_changed_model(env, tmp_path):
    train(make_cfg("trainer.epochs=1"), run_dir=tmp_path / "run")
    result = dlexp("train", f"trainer.resume={tmp_path / 'run'}", "model=cnn", env=env)
    assert result.returncode == 2 and "cannot change a run that is being resumed" in result.stderr


def test_unwritable_output_folder(env, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    result = dlexp("train", env={**env, "DLEXP_OUTPUTS": str(locked / "outputs")})
    locked.chmod(0o755)
    if os.geteuid() == 0:  # root writes anywhere; a path under a file is unwritable for all
        (tmp_path / "afile").write_text("x")
        result = dlexp("train", env={**env, "DLEXP_OUTPUTS": str(tmp_path / "afile" / "out")})
    assert result.returncode == 2
    assert "is not a writable folder" in result.stderr and "Traceback" not in result.stderr
