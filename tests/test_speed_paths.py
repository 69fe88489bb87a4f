"""The speed machinery: decoded-data caches, the fast experiment, precision and compile paths."""

from __future__ import annotations

import logging

import pytest
import torch

import fake_data
from conftest import make_cfg
from dlexp.cli import main
from dlexp.data import cache, load_data
from dlexp.record import read_history
from dlexp.run import train


@pytest.fixture
def fresh_root(tmp_path, monkeypatch):
    """A data root of its own (no disk cache yet) and an empty in-process cache."""
    root = fake_data.mnist_root(tmp_path / "data")
    monkeypatch.setenv("DLEXP_DATA", str(root))
    monkeypatch.setenv("DLEXP_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("DLEXP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_MEMORY", {})
    return root


def snapshot(folder) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_decoded_once_per_process_then_from_disk(fresh_root, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="dlexp")
    cfg = make_cfg("data=mnist").data
    first = load_data(cfg, seed=0)
    assert "mnist: decoded 200 training samples" in caplog.text
    (cached,) = cache.cache_dir().glob("mnist-*.pt")

    caplog.clear()
    again = load_data(cfg, seed=0)
    assert "decoded earlier in this process" in caplog.text
    assert torch.equal(first.train.x, again.train.x) and first.meta.mean == again.meta.mean

    monkeypatch.setattr(cache, "_MEMORY", {})  # as a new process would start
    caplog.clear()
    from_disk = load_data(cfg, seed=0)
    assert f"loaded the decoded tensors from {cached}" in caplog.text
    assert torch.equal(first.test.x, from_disk.test.x) and torch.equal(
        first.test.y, from_disk.test.y
    )
    assert from_disk.meta.class_names == first.meta.class_names


def test_changed_files_are_decoded_again(fresh_root, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="dlexp")
    load_data(make_cfg("data=mnist").data, seed=0)
    fake_data.mnist_root(fresh_root, n_train=300)  # the user replaced the files
    monkeypatch.setattr(cache, "_MEMORY", {})
    caplog.clear()
    data = load_data(make_cfg("data=mnist").data, seed=0)
    assert "decoded 300 training samples" in caplog.text
    assert len(data.train) + len(data.val) == 300


@pytest.mark.parametrize("damage", ["not a tensor file", "well-formed but wrong labels"])
def test_a_damaged_or_wrong_cache_is_noticed(damage, fresh_root, caplog, monkeypatch):
    first = load_data(make_cfg("data=mnist").data, seed=0)
    (cached,) = cache.cache_dir().glob("mnist-*.pt")
    if damage == "not a tensor file":
        cached.write_bytes(b"not a tensor file")
    else:  # the shape of a good cache, with every label shifted by one
        state = torch.load(cached, weights_only=True)
        state["train"] = (state["train"][0], (state["train"][1] + 1) % 10)
        torch.save(state, cached)
    monkeypatch.setattr(cache, "_MEMORY", {})
    caplog.set_level(logging.INFO, logger="dlexp")
    data = load_data(make_cfg("data=mnist").data, seed=0)
    assert f"ignoring the cache file {cached}" in caplog.text and "decoding again" in caplog.text
    assert torch.equal(data.train.y, first.train.y)  # the real labels, decoded afresh


def test_nothing_is_written_under_a_read_only_data_root(fresh_root, tmp_path, monkeypatch):
    before = snapshot(fresh_root)
    fresh_root.chmod(0o555)  # (root ignores this, hence the snapshot)
    try:
        train(make_cfg("data=mnist", "trainer.epochs=1"), run_dir=tmp_path / "run")
    finally:
        fresh_root.chmod(0o755)
    assert snapshot(fresh_root) == before
    assert list(cache.cache_dir().glob("mnist-*.pt"))  # cached in the cache folder instead
    monkeypatch.setattr(cache, "_MEMORY", {})
    monkeypatch.setenv("DLEXP_CACHE", str(tmp_path / "cache2"))
    load_data(make_cfg("data=mnist", "data.cache=false").data, seed=0)
    assert not (tmp_path / "cache2").exists()  # data.cache=false: no cache at all


def test_six_job_sweep_decodes_the_data_once(fresh_root, tmp_path):
    lrs = "0.1,0.03,0.01,0.003,0.001,0.0003"
    main(["train", "-m", "data=mnist", f"optimizer.lr={lrs}", "trainer.epochs=1"])
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    logs = [p.read_text() for p in sorted(sweep.glob("*/train.log"))]
    assert len(logs) == 6
    assert sum("mnist: decoded 200 training samples" in text for text in logs) == 1
    assert sum("decoded earlier in this process" in text for text in logs) == 5


def test_fast_experiment_and_per_epoch_history(env, tmp_path):
    cfg = make_cfg("experiment=mnist_cnn_fast", "trainer.epochs=2", "trainer.test_every_epoch=true")
    assert cfg.data.batch_size == 128 and cfg.scheduler._target_.endswith("OneCycleLR")
    with pytest.raises(Exception, match="cannot warm up and anneal in only 4 steps"):
        train(cfg, run_dir=tmp_path / "too_short")
    cfg.data.batch_size = 32
    metrics = train(cfg, run_dir=tmp_path)
    history = read_history(tmp_path)  # (TensorBoard's scalars: float32)
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["test/acc"] == pytest.approx(metrics["test/acc"], rel=1e-6)
    assert all(h["time/train_seconds"] > 0 for h in history) and metrics["samples_per_s"] > 0
    assert len(load_data(cfg.data, seed=0).val) == 0  # all training images train


def test_batch_augmentation_runs_in_training(env, tmp_path):
    cfg = make_cfg(
        "model=cnn",
        "data=cifar10",
        "trainer.epochs=1",
        "data.augment.hflip=true",
        "data.augment.shift=2",
        "data.augment.noise=0.1",
    )
    assert train(cfg, run_dir=tmp_path)["status"] == "completed"


def test_bf16_autocast_and_thread_count_on_cpu(env, tmp_path):
    metrics = train(
        make_cfg(
            "model=cnn",
            "data=mnist",
            "trainer.epochs=1",
            "trainer.precision=bf16",
            "device.threads=1",
        ),
        run_dir=tmp_path,
    )
    assert torch.get_num_threads() == 1 and metrics["status"] == "completed"


@pytest.mark.slow
def test_compile_says_so_and_trains(env, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dlexp")
    metrics = train(
        make_cfg("model=cnn", "data=mnist", "trainer.epochs=1", "trainer.compile=true"), tmp_path
    )
    assert "torch.compile" in caplog.text and metrics["status"] == "completed"


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=autoencoder", "data=mnist"],
        ["model=gan", "data=mnist"],
        ["experiment=style_transfer", "model.weights=none", "data.size=32", "data.repeat=2"],
    ],
)
def test_bf16_autocast_for_every_task_and_its_reports(overrides, env, tmp_path):
    """The reports (grids, PCA, samples) run in fp32 even when training uses autocast."""
    metrics = train(make_cfg(*overrides, "trainer.epochs=1", "trainer.precision=bf16"), tmp_path)
    assert metrics["status"] == "completed"
    assert any(p.suffix == ".png" for p in tmp_path.iterdir())
