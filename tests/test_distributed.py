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

from conftest import dlexp
from dlexp.checkpoint import load_checkpoint

RUN = ["data=mnist", "trainer.epochs=3"]


def test_two_processes_match_one_with_the_same_global_batch(env, tmp_path):
    two = dlexp(
        "train",
        *RUN,
        "trainer.devices=2",
        "data.batch_size=16",
        f"hydra.run.dir={tmp_path / 'two'}",
        env=env,
    )
    assert two.returncode == 0, two.stderr
    assert "2 processes x data.batch_size 16 = global batch 32" in two.stdout
    one = dlexp("train", *RUN, "data.batch_size=32", f"hydra.run.dir={tmp_path / 'one'}", env=env)
    assert one.returncode == 0, one.stderr
    a = json.loads((tmp_path / "two" / "metrics.json").read_text())
    b = json.loads((tmp_path / "one" / "metrics.json").read_text())
    for key in ("test/loss", "test/acc", "train/loss"):
        assert a[key] == pytest.approx(b[key], abs=1e-4)
    losses = [h["train/loss"] for h in a["history"]]
    assert losses == sorted(losses, reverse=True)  # decreasing
    assert len(list((tmp_path / "two").glob("events.out.tfevents.*"))) == 1  # rank 0 writes alone
    assert load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")["epoch"] == 3
    assert not (Path(env["DLEXP_OUTPUTS"]) / "runs").exists()  # no per-rank folders


def test_resume_a_distributed_run(env, tmp_path):
    run = tmp_path / "run"
    first = dlexp(
        "train", *RUN, "trainer.epochs=1", "trainer.devices=2", f"hydra.run.dir={run}", env=env
    )
    assert first.returncode == 0, first.stderr
    again = dlexp(
        "train", f"trainer.resume={run}", "trainer.epochs=2", "trainer.devices=2", env=env
    )
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2


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
    assert "a process of the distributed run failed and the others were stopped" in err


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
    assert run.name.startswith("torchrun-") and (run / "metrics.json").is_file()
