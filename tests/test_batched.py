"""The batched launcher: a stacked job resumes alone, a killed sweep resumes after
SIGKILL, a diverging job, and what runs alone (and says why)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli, make_cfg, read_scalars
from dlexp.record import read_history
from dlexp.run import train

# Stacked and sequential runs differ only by floating-point reordering (batched matmuls,
# the optimizers' arithmetic written out); tests/test_parity.py holds them to 1e-5 on a matrix
# of settings. Here: resuming and faults.
RTOL = 1e-5
IRIS = ["data=iris", "optimizer=adam", "data.batch_size=16", "trainer.epochs=3"]


def sweep(capsys, folder: Path, *args: str) -> tuple[int, str]:
    code, out, err = cli(
        capsys, "train", "-m", "trainer.progress=none", *args, f"hydra.sweep.dir={folder}"
    )
    return code, out + err


def jobs(folder: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/metrics.json")}


def assert_same_results(a: dict, b: dict, folders: tuple[Path, Path] | None = None) -> None:
    for key, value in b.items():
        if isinstance(value, float) and key not in ("time_s", "samples_per_s"):
            assert a[key] == pytest.approx(value, rel=RTOL, abs=1e-6), key
    if folders is not None:  # the histories, as TensorBoard reads them
        x, y = (read_history(f) for f in folders)
        assert [r["epoch"] for r in x] == [r["epoch"] for r in y]
        for r, q in zip(x, y, strict=True):
            assert r["val/loss"] == pytest.approx(q["val/loss"], rel=RTOL, abs=1e-6)


def test_a_stacked_jobs_checkpoint_resumes_alone_like_a_sequential_run(env, tmp_path, capsys):
    args = [*IRIS, "optimizer.lr=0.01", "optimizer.momentum=0.9", "optimizer=sgd"]
    code, _ = sweep(
        capsys,
        tmp_path / "sweep",
        *args[:-3],
        "optimizer=sgd",
        "optimizer.momentum=0.9",
        "optimizer.lr=0.01,0.02",
        "trainer.epochs=2",
        "hydra/launcher=batched",
    )
    job = next((tmp_path / "sweep").glob("0_*"))
    resumed = train(make_cfg(*args, f"trainer.resume='{job}'", "trainer.epochs=4"))
    straight = train(make_cfg(*args, "trainer.epochs=4"), run_dir=tmp_path / "straight")
    assert code == 0 and resumed["epochs"] == 4
    assert_same_results(resumed, straight, (job, tmp_path / "straight"))


def test_a_diverging_job_is_marked_and_its_group_goes_on(env, tmp_path, capsys):
    code, log = sweep(
        capsys,
        tmp_path / "s",
        "data=iris",
        "optimizer=sgd",
        "optimizer.lr=0.01,1e9",
        "trainer.epochs=3",
        "hydra/launcher=batched",
    )
    results = jobs(tmp_path / "s")
    good = next(v for k, v in results.items() if k.startswith("0_"))
    bad = next(v for k, v in results.items() if k.startswith("1_"))
    assert code == 0 and good["status"] == "completed" and good["epochs"] == 3
    assert bad["status"] == "diverged" and "NaN or infinite" in bad["message"]
    assert re.search(
        r"dlexp: 1_\S*optimizer.lr=1000000000.0\S* diverged: the training loss became NaN", log
    )
    summary = (tmp_path / "s" / "summary.csv").read_text()
    assert "diverged" in summary and "completed" in summary


def test_jobs_that_cannot_be_stacked_run_alone_and_the_log_says_why(env, tmp_path, capsys):
    code, log = sweep(
        capsys,
        tmp_path / "s",
        "data=iris",
        "trainer.epochs=1",
        "model.dropout=0,0.5",
        "hydra/launcher=batched",
    )
    assert code == 0 and "0 of 2 jobs in 0 stacked group(s), 2 one by one" in log
    assert "job 0 runs alone: no other job shares its model, data and settings" in log
    assert "job 1 runs alone: dropout masks are random per step" in log
    assert [m["status"] for m in jobs(tmp_path / "s").values()] == ["completed"] * 2


def test_a_sigkilled_batched_sweep_continues_with_sweep_resume(env, tmp_path, capsys):
    # Two groups: two 2-epoch jobs (they finish), two 5-epoch jobs (killed after epoch 3).
    args = [
        "train",
        "-m",
        "data=iris",
        "optimizer=sgd",
        "optimizer.lr=0.05,0.1",
        "trainer.epochs=2,5",
        "trainer.checkpoint_interval=0",
        "trainer.progress=none",
        "hydra/launcher=batched",
    ]
    helper = str(Path(__file__).with_name("kill_at_save.py"))
    killed = subprocess.run(
        [sys.executable, helper, "5:3", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    folder = next((Path(env["DLEXP_OUTPUTS"]) / "sweeps").iterdir())
    assert sorted(m["status"] for m in jobs(folder).values()) == ["completed", "completed"]

    time.sleep(1.0)  # a later second, as any real resume is: TensorBoard orders event files by it
    code, out, err = cli(capsys, *args, "sweep.resume=true")
    assert code == 0, err
    assert f"resuming the sweep in {folder}" in out
    assert (out + err).count("already finished, skipped") == 2
    assert "resuming 2 stacked jobs at epoch 4" in out + err
    results = jobs(folder)
    assert len(results) == 4 and {m["status"] for m in results.values()} == {"completed"}
    code, _ = sweep(capsys, tmp_path / "reference", *args[2:])
    for name, reference in jobs(tmp_path / "reference").items():
        assert_same_results(
            results[name], reference, (folder / name, tmp_path / "reference" / name)
        )
        steps = [s for s, _ in read_scalars(folder / name)["val/loss"]]
        assert steps == sorted(set(steps))  # every epoch once in TensorBoard


def test_a_job_that_stopped_early_in_a_group_resumes_as_finished(env, tmp_path, capsys):
    """A job that stopped early keeps its weights while its group trains on; continued from
    its checkpoint it trains no further epoch (its patience is spent) and reports the same."""
    args = ["data=iris", "optimizer=sgd", "trainer.epochs=8", "trainer.early_stopping.patience=1"]
    code, _ = sweep(
        capsys,
        tmp_path / "s",
        *args,
        "trainer.early_stopping.min_delta=0.02",
        "optimizer.lr=0.001,0.2",
        "trainer.checkpoint_interval=0",
        "hydra/launcher=batched",
    )
    results = jobs(tmp_path / "s")
    stopped = next(k for k, m in results.items() if m["epochs"] < 8)
    folder = tmp_path / "s" / stopped
    again = train(make_cfg(*args, f"trainer.resume='{folder}'"))
    assert code == 0 and again["epochs"] == results[stopped]["epochs"]
    assert_same_results(again, results[stopped])
    # (its last epoch's metrics, read back from its events: float32)
    assert again["train/loss"] == pytest.approx(results[stopped]["train/loss"], rel=1e-6)
