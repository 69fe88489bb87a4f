"""The life of a run (dlexp.run): claiming folders, never overwriting a run, resuming, cleanup."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import cli, make_cfg, read_scalars, read_tags
from dlexp.checkpoint import load_checkpoint
from dlexp.errors import DlexpError
from dlexp.record import read_history
from dlexp.run import claim, release, train


def digest(run: Path) -> dict[str, str]:
    """Checksums of what a run leaves that a user would not want to lose."""
    names = ["checkpoints/last.pt", "checkpoints/best.pt", "metrics.json", ".hydra/config.yaml"]
    return {
        n: hashlib.sha256((run / n).read_bytes()).hexdigest() for n in names if (run / n).exists()
    }


def test_a_new_run_never_replaces_another_unless_asked(env, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, "train", "trainer.epochs=2", f"hydra.run.dir={run}")[0] == 0
    before = digest(run)

    code, _, err = cli(capsys, "train", "model.hidden=[8]", f"hydra.run.dir={run}")
    assert code == 2 and "Traceback" not in err
    assert f"{run} already holds a completed run" in err
    assert f"dlexp train trainer.resume={run}" in err and "trainer.overwrite=true" in err
    assert digest(run) == before  # byte-identical, .hydra/ included
    assert len(list(run.glob("events.out.tfevents.*"))) == 1

    code, _, _ = cli(
        capsys, "train", "model.hidden=[8]", "trainer.overwrite=true", f"hydra.run.dir={run}"
    )
    assert code == 0
    assert digest(run)["checkpoints/last.pt"] != before["checkpoints/last.pt"]
    weights = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert weights["head.weight"].shape == (3, 8)  # the new run's model
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # the old curves are gone too


def test_of_two_runs_started_at_once_on_one_folder_exactly_one_trains(env, tmp_path):
    run = tmp_path / "run"
    args = ["trainer.epochs=40", "trainer.progress=log", f"hydra.run.dir={run}"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dlexp", "train", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, _, err in results if code == 2)
    assert "is in use by another run" in refused or "already holds a completed run" in refused
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert (run / "train.log").read_text().count("run saved in") == 1
    assert not (run / "run.lock").exists()  # released


def test_a_live_lock_refuses_and_a_stale_one_is_taken_over(env, tmp_path, caplog):
    run = tmp_path / "run"
    fd = claim(run)  # another "process" holds the folder (flock is per open file)
    try:
        with pytest.raises(DlexpError, match=rf"is in use by another run \(process {os.getpid()}"):
            train(make_cfg("trainer.epochs=1"), run_dir=run)
    finally:
        release(run, fd)
    assert not (run / "checkpoints").exists()

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()
    (run / "run.lock").write_text(json.dumps({"pid": int(dead), "host": "here"}))
    with caplog.at_level("WARNING", logger="dlexp"):
        metrics = train(make_cfg("trainer.epochs=1"), run_dir=run)
    assert metrics["status"] == "completed"
    assert f"taking over the lock of process {dead}" in caplog.text


def test_a_checkpoint_copied_from_another_run_is_refused(env, tmp_path):
    train(make_cfg("trainer.epochs=1"), run_dir=tmp_path / "a")
    train(make_cfg("trainer.epochs=1", "model.hidden=[8]"), run_dir=tmp_path / "b")
    before = digest(tmp_path / "b")
    (tmp_path / "b" / "checkpoints" / "last.pt").write_bytes(
        (tmp_path / "a" / "checkpoints" / "last.pt").read_bytes()
    )
    metrics_before = (tmp_path / "b" / "metrics.json").read_bytes()
    with pytest.raises(DlexpError, match="written by another run"):
        train(make_cfg(f"trainer.resume={tmp_path / 'b'}", "trainer.epochs=3"))
    assert (tmp_path / "b" / "metrics.json").read_bytes() == metrics_before
    assert digest(tmp_path / "b")["checkpoints/best.pt"] == before["checkpoints/best.pt"]


def test_resuming_a_loose_checkpoint_starts_a_new_run_folder(env, tmp_path, capsys):
    train(make_cfg("trainer.epochs=1"), run_dir=tmp_path / "a")
    loose = tmp_path / "loose" / "model.pt"
    loose.parent.mkdir()
    loose.write_bytes((tmp_path / "a" / "checkpoints" / "last.pt").read_bytes())
    code, _, _ = cli(capsys, "train", f"trainer.resume={loose}", "trainer.epochs=2")
    assert code == 0
    assert sorted(p.name for p in loose.parent.iterdir()) == ["model.pt"]  # nothing beside it
    (new,) = (Path(env["DLEXP_OUTPUTS"]) / "runs").iterdir()
    assert json.loads((new / "metrics.json").read_text())["epochs"] == 2
    assert load_checkpoint(new / "checkpoints" / "last.pt")["loop"]["epoch"] == 2


def test_a_finished_run_is_complete_or_trains_on_with_more_epochs(env, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, "train", "trainer.epochs=2", f"hydra.run.dir={run}")[0] == 0
    before = digest(run)
    keys = set(json.loads((run / "metrics.json").read_text()))

    code, out, _ = cli(capsys, "train", f"trainer.resume={run}")
    assert code == 0 and "is complete (2 of 2 epochs)" in out and "resuming at" not in out
    assert digest(run) == before

    code, out, _ = cli(capsys, "train", f"trainer.resume={run}", "trainer.epochs=3")
    assert code == 0 and "resuming at epoch 3 of 3" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == keys and metrics["epochs"] == 3
    assert [h["epoch"] for h in read_history(run)] == [1, 2, 3]
    steps = [s for s, _ in read_scalars(run)["val/loss"]]
    assert steps == sorted(set(steps))  # every epoch once in TensorBoard


@pytest.mark.parametrize(
    "args", [["optimizer.lr=-1"], ["model=cnn"], ["data=mnist", "data.root=/nonexistent"]]
)
def test_a_refused_run_leaves_no_folder(args, env, capsys):
    code, _, err = cli(capsys, "train", *args)
    assert code == 2 and "Traceback" not in err
    runs = Path(env["DLEXP_OUTPUTS"]) / "runs"
    assert not runs.exists() or not list(runs.iterdir())


def test_a_read_only_run_folder_gets_one_paragraph(env, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    train(make_cfg("trainer.epochs=1"), run_dir=run)
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).startswith(str(run)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr("dlexp.run.os.open", read_only)
    code, _, err = cli(capsys, "train", f"trainer.resume={run}", "trainer.epochs=2")
    assert code == 2 and "Traceback" not in err
    assert f"cannot use {run} as a run folder: Permission denied" in err


def test_an_unknown_checkpoint_format_is_one_paragraph(env, tmp_path, capsys):
    train(make_cfg("trainer.epochs=1"), run_dir=tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    state["format"] = 99
    torch.save(state, path)
    code, _, err = cli(capsys, "eval", f"run={tmp_path / 'run'}")
    assert code == 2 and "checkpoint format 99" in err and "Traceback" not in err


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ['DLEXP_OUTPUTS']) / 'pwned'}",))


@pytest.mark.parametrize("version", [2, 3])
def test_an_older_checkpoint_still_resumes_and_its_history_is_never_unpickled(
    version, env, tmp_path
):
    """Formats 2 and 3 also kept the history (2 as a list, 3 as pickled bytes); format 4 keeps
    it in the event files alone. An old file's history is ignored: a payload in it never runs."""
    train(make_cfg("trainer.epochs=2"), run_dir=tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    assert "history" not in state and state["format"] == 4
    history = [{"epoch": 1}, {"epoch": 2}] if version == 2 else pickle.dumps([_Payload()])
    torch.save({**state, "format": version, "history": history}, path)  # as dlexp wrote it
    assert "history" not in load_checkpoint(path)
    train(make_cfg("trainer.epochs=3", f"trainer.resume={tmp_path / 'run'}"))
    assert [row["epoch"] for row in read_history(tmp_path / "run")] == [1, 2, 3]
    assert load_checkpoint(path)["format"] == 4
    assert not (Path(os.environ["DLEXP_OUTPUTS"]) / "pwned").exists()


def test_an_unknown_objective_is_an_error_not_none(env, capsys):
    code, _, err = cli(capsys, "train", "trainer.epochs=1", "objective=val/f1")
    assert code == 2 and "objective='val/f1' is not a metric of this run" in err
    assert "val/acc" in err


@pytest.mark.parametrize("kind", ["symlink", "garbage"])
def test_a_lock_file_that_is_not_dlexps_is_never_followed_nor_a_traceback(
    kind, env, tmp_path, capsys
):
    run = tmp_path / "run"
    train(make_cfg("trainer.epochs=1"), run_dir=run)
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    if kind == "symlink":
        (run / "run.lock").symlink_to(outside)
    else:
        (run / "run.lock").write_text("[1]")
    code, _, err = cli(capsys, "train", f"trainer.resume={run}", "trainer.epochs=2")
    assert outside.read_text() == "precious" and "Traceback" not in err
    if kind == "symlink":
        assert code == 2 and "run.lock is not a regular file" in err
    else:  # an unreadable record of a holder long gone: taken over
        assert code == 0, err


def test_a_resumed_run_writes_the_custom_scalars_layout_once_per_event_file(env, tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    run = tmp_path / "run"
    train(make_cfg("trainer.epochs=2", "trainer.progress=none"), run_dir=run)
    train(make_cfg("trainer.epochs=5", "trainer.progress=none", f"trainer.resume={run}"))
    files = sorted(run.glob("events.out.tfevents.*"))
    layouts = [
        sum(
            v.tag == "custom_scalars__config__"
            for e in EventFileLoader(str(f)).Load()
            for v in e.summary.value
        )
        for f in files
    ]
    assert layouts == [1, 1]  # (every epoch after the resume wrote it again before)


def test_the_custom_scalars_charts_match_only_their_own_tags(env, tmp_path):
    """TensorBoard reads a chart's tags as regular expressions: train/loss must not collect
    train/loss_step."""
    import re

    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.custom_scalar import layout_pb2

    train(
        make_cfg("trainer.epochs=1", "trainer.progress=none", "trainer.log_every_steps=1"),
        run_dir=tmp_path,
    )
    (config,) = [
        v.tensor.string_val[0]
        for f in tmp_path.glob("events.out.tfevents.*")
        for e in EventFileLoader(str(f)).Load()
        for v in e.summary.value
        if v.tag == "custom_scalars__config__"
    ]
    layout = layout_pb2.Layout.FromString(config)
    tags = set(read_tags(tmp_path)["scalars"])
    assert "train/loss_step" in tags
    (loss,) = [c for c in layout.category[0].chart if c.title == "loss"]
    matched = {t for t in tags for r in loss.multiline.tag if re.search(r, t)}
    assert {"train/loss", "val/loss"} <= matched <= {"train/loss", "val/loss", "test/loss"}
