"""trainer.devices=N: torchrun + DDP on CPU (gloo), one run folder, matching one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli, make_cfg
from dlexp.checkpoint import load_checkpoint
from dlexp.record import read_history
from dlexp.run import train

RUN = ["data=mnist", "trainer.epochs=3"]


def test_an_experiment_with_two_devices_matches_one_process_with_the_global_batch(
    env, tmp_path, capsys
):
    """trainer.devices comes from the composed config (here an experiment file in -cd)."""
    extra = tmp_path / "configs" / "experiment"
    extra.mkdir(parents=True)
    (extra / "two.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /model: cnn\n  - override /data: mnist\n"
        "data:\n  batch_size: 16\ntrainer:\n  devices: 2\n  epochs: 3\n"
    )
    code, _, err = cli(capsys, "train", "-cd", str(tmp_path / "configs"), "experiment=two")
    assert code == 0, err
    (two,) = (Path(env["DLEXP_OUTPUTS"]) / "runs").iterdir()
    assert two.name.startswith("cnn_mnist_")  # named by the experiment's model and data
    log = (two / "train.log").read_text()
    assert "2 processes x data.batch_size 16 = global batch 32" in log
    one = train(make_cfg(*RUN, "model=cnn", "data.batch_size=32"), run_dir=tmp_path / "one")
    a = json.loads((two / "metrics.json").read_text())
    for key in ("test/loss", "test/acc", "train/loss"):
        assert a[key] == pytest.approx(one[key], abs=1e-4)
    losses = [h["train/loss"] for h in read_history(two)]
    assert losses == sorted(losses, reverse=True)  # decreasing
    assert len(list(two.glob("events.out.tfevents.*"))) == 1  # rank 0 writes alone
    assert load_checkpoint(two / "checkpoints" / "last.pt")["loop"]["epoch"] == 3


@pytest.mark.slow  # torchrun's processes start torch again (~9 s); resuming is tested in-process
def test_resume_a_run_with_two_processes(env, tmp_path, capsys):
    run = tmp_path / "run"
    train(make_cfg(*RUN, "trainer.epochs=1"), run_dir=run)
    code, _, err = cli(
        capsys, "train", f"trainer.resume={run}", "trainer.epochs=2", "trainer.devices=2"
    )
    assert code == 0, err
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
    assert "resuming at epoch 2 of 2" in (run / "train.log").read_text()


def _rank_one(outputs: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                environ = (d / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"DLEXP_OUTPUTS={outputs}".encode() in environ and b"RANK=1" in environ:
                pids.append(int(d.name))
    return pids


@pytest.mark.slow  # three processes start torch (~12 s)
@pytest.mark.skipif(
    not Path("/proc/self/environ").exists(), reason="needs /proc to find the worker"
)
def test_a_killed_process_stops_the_run_with_its_error(env, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dlexp",
            "train",
            "data=mnist",
            "trainer.devices=2",
            "data.batch_size=4",
            "trainer.epochs=500",
            "trainer.checkpoint_interval=0",  # last.pt after the first epoch: the cue to kill
            f"hydra.run.dir={run}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    (pid,) = _rank_one(env["DLEXP_OUTPUTS"])
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "rank      : 1" in err and "SIGKILL" in err
    assert "a process of the distributed run" in err and "the others were stopped" in err


@pytest.mark.slow  # three processes start torch (~8 s); launch() is tested above
def test_torchrun_by_hand_shares_one_run_folder(env, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "dlexp",
            "train",
            "data=mnist",
            "trainer.epochs=1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (run,) = (Path(env["DLEXP_OUTPUTS"]) / "runs").iterdir()
    assert run.name.startswith("ann_mnist_torchrun-") and (run / "metrics.json").is_file()
