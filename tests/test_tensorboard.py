"""A real TensorBoard server on a small sweep, read through its HTTP data API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from conftest import make_cfg
from dlexp.cli import main
from dlexp.run import train


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(base: str, path: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def server(env):
    """TensorBoard on 127.0.0.1 over the outputs folder, once a 2 x 2 sweep has run."""
    main(["train", "-m", "optimizer=sgd,adam", "optimizer.lr=0.1,0.01", "trainer.epochs=2"])
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            env["DLEXP_OUTPUTS"],
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # bounded: the server loads the four runs within seconds
            try:
                if sum("optimizer.lr=" in r for r in get(base, "/data/runs")) == 4:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_tensorboard_serves_scalars_images_hparams_and_custom_scalars_of_the_sweep(server):
    runs = [r for r in get(server, "/data/runs") if "optimizer.lr=" in r]  # the jobs ...
    assert len(get(server, "/data/runs")) == 5  # ... and the sweep folder's HParams record
    run = urllib.parse.quote(runs[0])
    values = get(server, f"/data/plugin/scalars/scalars?run={run}&tag=val%2Facc")
    assert len(values) == 2 and all(0 <= v[2] <= 1 for v in values)  # (time, step, value)
    images = get(server, "/data/plugin/images/tags")
    assert all("test/confusion_matrix" in tags for tags in images.values())

    experiment = get(server, "/data/plugin/hparams/experiment", {"experimentName": ""})
    infos = experiment["hparamInfos"]
    names = [info["name"] for info in infos]
    assert names[:2] == ["optimizer", "optimizer.lr"]  # the swept keys come first ...
    assert all(info["differs"] for info in infos[:2])  # ... marked as what differs
    types = {info["name"]: info["type"] for info in infos}
    assert types["optimizer.lr"] == "DATA_TYPE_FLOAT64" and types["optimizer"] == "DATA_TYPE_STRING"
    assert types["seed"] == "DATA_TYPE_FLOAT64" and "experiment" not in types  # not "None"
    metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert metrics[0] == "val/acc"  # the objective first (the classification task's monitor)
    assert {"val/acc", "test/acc", "train/loss"} <= set(metrics)
    assert not any(m.endswith("_step") or m.startswith("lr") for m in metrics)

    # Custom Scalars: each chart collects exactly the train and val series
    layout = get(server, "/data/plugin/custom_scalars/layout")
    charts = {c["title"]: c["multiline"]["tag"] for c in layout["category"][0]["chart"]}
    assert {"loss", "acc"} <= set(charts)
    for title, patterns in charts.items():
        series = set()
        for pattern in patterns:
            query = urllib.parse.urlencode({"run": runs[0], "tag": pattern})
            answer = get(server, f"/data/plugin/custom_scalars/scalars?{query}")
            assert answer["regex_valid"]
            series |= set(answer["tag_to_events"])
        assert series == {f"train/{title}", f"val/{title}"}  # not train/loss_step too


def test_log_weights_writes_histograms_weight_changes_kernels_and_feature_maps(env, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg(
        "model=cnn",
        "data=mnist",
        "trainer.epochs=2",
        "trainer.max_steps_per_epoch=2",
        "trainer.log_weights=true",
    )
    train(cfg, run_dir=tmp_path)
    acc = EventAccumulator(
        str(tmp_path), size_guidance={"histograms": 0, "images": 0, "scalars": 0}
    )
    acc.Reload()
    tags = acc.Tags()
    first = next(t for t in tags["histograms"] if t.startswith("weights/"))
    assert len(acc.Histograms(first)) == 2  # one per epoch
    assert any(t.startswith("grads/") for t in tags["histograms"])
    changes = [t for t in tags["scalars"] if t.startswith("weight_change/")]
    assert changes and len(acc.Scalars(changes[0])) == 1  # from the second epoch on
    assert all(e.value > 0 for t in changes for e in acc.Scalars(t))  # training moved them
    assert any(t.startswith("grad_norm/") for t in tags["scalars"])
    conds = [t for t in tags["scalars"] if t.startswith("weight_cond/")]  # the dense layers'
    assert conds and all(e.value >= 1 for t in conds for e in acc.Scalars(t))
    assert {"kernels/first_conv", "feature_maps/first_conv"} <= set(tags["images"])
