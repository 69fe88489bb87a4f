"""The course's tiny-model grids: the course's own loop against `dlexp train -m`.

    python benchmarks/sweep_speed.py [--repeats 3] [--grid qwerties|iris|both] [--against REV]

(a) the course's loop: one model after another in one process, as the notebook writes it
    (DUDL_ANN_learningrates: 2-1-1 net, BCE-with-logits, SGD, 1,000 full-batch epochs for each
    of 40 learning rates; for Iris: 4-64-64-3, cross-entropy, SGD, 8 rates x 5 seeds, 200
    full-batch epochs). Timed from the first model to the last (imports excluded).
(b) dlexp's basic launcher: the whole `dlexp train -m ...` command, start-up, run folders,
    TensorBoard, checkpoints and the sweep summary included.
(c) dlexp's batched launcher (hydra/launcher=batched): the same command, the jobs trained as
    stacked groups.
(d) one job alone: `train(cfg)` of one qwerties rate (1,000 epochs, checkpoints and validation
    every epoch) against one model of the course's loop, in one process (after a warm-up).
Prints wall time, time per job and the ratio to (a), medians of --repeats runs.
--against REV also runs (b), (c) and (d) with the dlexp of git revision REV, interleaved with
this checkout's runs (benchmarks/revisions.py), so that the two are compared side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from revisions import checkout, env_for

QWERTY_LRS = np.linspace(0.001, 0.1, 40)
IRIS_LRS = np.linspace(0.001, 0.1, 8)
IRIS_SEEDS = range(5)

# The course's data and its loop for one model, as the notebook writes it; both scripts below
# (the grids, and one model against one dlexp job) start with it.
COURSE_LOOP = """
import os, sys, tempfile, time, numpy as np, torch
from torch import nn
def qwerties(n=100):
    a = [1 + np.random.randn(n), 1 + np.random.randn(n)]
    b = [5 + np.random.randn(n), 1 + np.random.randn(n)]
    data = torch.tensor(np.hstack((a, b)).T).float()
    labels = torch.tensor(np.vstack((np.zeros((n, 1)), np.ones((n, 1))))).float()
    return data, labels
def course_fit(model, lossfun, lr, epochs, data, labels):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = torch.zeros(epochs)
    for epoch in range(epochs):
        loss = lossfun(model(data), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses[epoch] = loss.item()
    return model(data)
"""

COURSE = (
    COURSE_LOOP
    + """
grid = sys.argv[1]
torch.manual_seed(0)
if grid == "qwerties":
    data, labels = qwerties()
    jobs = [(lr, 0) for lr in np.linspace(0.001, 0.1, 40)]
    make = lambda: nn.Sequential(nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 1))
    lossfun, epochs = nn.BCEWithLogitsLoss(), 1000
else:
    from sklearn.datasets import load_iris
    iris = load_iris()
    data = torch.tensor(iris.data).float()
    labels = torch.tensor(iris.target).long()
    jobs = [(lr, s) for s in range(5) for lr in np.linspace(0.001, 0.1, 8)]
    make = lambda: nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                 nn.Linear(64, 3))
    lossfun, epochs = nn.CrossEntropyLoss(), 200
start = time.perf_counter()
for lr, seed in jobs:
    torch.manual_seed(seed)
    predictions = course_fit(make(), lossfun, lr, epochs, data, labels)
print(time.perf_counter() - start)
"""
)


def course(grid: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", COURSE, grid], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def dlexp_sweep(grid: str, launcher: str, tree: Path | None = None) -> float:
    if grid == "qwerties":
        args = [
            "experiment=ann_lr_sweep",
            "trainer.epochs=1000",
            "optimizer.lr=" + ",".join(f"{lr:.6g}" for lr in QWERTY_LRS),
        ]
    else:
        args = [
            "data=iris",
            "model.hidden=[64,64]",
            "optimizer=sgd",
            "data.batch_size=150",
            "trainer.epochs=200",
            "optimizer.lr=" + ",".join(f"{lr:.6g}" for lr in IRIS_LRS),
            "seed=" + ",".join(str(s) for s in IRIS_SEEDS),
        ]
    with tempfile.TemporaryDirectory() as out:
        env = env_for(tree, {**os.environ, "DLEXP_OUTPUTS": out})
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "dlexp",
                "train",
                "-m",
                *args,
                "trainer.progress=none",
                f"hydra/launcher={launcher}",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - start


SINGLE = (
    COURSE_LOOP
    + """
from dlexp.cli import compose_train
try:
    from dlexp.run import train
except ImportError:  # (dlexp before the one engine)
    from dlexp.train import train
os.environ["DLEXP_OUTPUTS"] = tempfile.mkdtemp()
data, labels = qwerties()
def course_model():
    start = time.perf_counter()
    model = nn.Sequential(nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 1))
    course_fit(model, nn.BCEWithLogitsLoss(), 0.01, 1000, data, labels)
    return time.perf_counter() - start
cfg = compose_train("experiment=ann_lr_sweep", "trainer.progress=none")
course_model(), train(cfg, run_dir=os.environ["DLEXP_OUTPUTS"] + "/warm")
for i in range(int(sys.argv[1])):
    c = course_model()
    tic = time.perf_counter()
    fit = train(cfg, run_dir=os.environ["DLEXP_OUTPUTS"] + f"/r{i}")["time_s"]
    print(c, fit, time.perf_counter() - tic)
"""
)


def single(repeats: int, tree: Path | None = None) -> tuple[float, float, float]:
    """(course model, dlexp fit, dlexp train(cfg)) seconds, medians."""
    out = subprocess.run(
        [sys.executable, "-c", SINGLE, str(repeats)],
        capture_output=True,
        text=True,
        check=True,
        env=env_for(tree, dict(os.environ)),
    )
    rows = [tuple(map(float, line.split())) for line in out.stdout.strip().splitlines()]
    return tuple(statistics.median(column) for column in zip(*rows, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grid", choices=["qwerties", "iris", "both"], default="both")
    parser.add_argument("--against", default=None, help="a git revision to time beside this one")
    opts = parser.parse_args()
    grids = ["qwerties", "iris"] if opts.grid == "both" else [opts.grid]
    trees = {"": None}
    if opts.against:
        trees[f" [{opts.against}]"] = checkout(opts.against)
    print("| grid | contender | wall s | s per job | vs (a) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for grid in grids:
        jobs = 40
        times: dict[str, list[float]] = {}
        for _ in range(opts.repeats):  # (interleaved: a slow minute hits every contender)
            times.setdefault("(a) course loop", []).append(course(grid))
            for tag, tree in trees.items():
                for launcher in ("basic", "batched"):
                    name = f"({'b' if launcher == 'basic' else 'c'}) dlexp {launcher} launcher{tag}"
                    times.setdefault(name, []).append(dlexp_sweep(grid, launcher, tree))
        a = statistics.median(times["(a) course loop"])
        for name in sorted(times):
            seconds = statistics.median(times[name])
            print(
                f"| {grid} | {name} | {seconds:.2f} | {seconds / jobs:.3f} | {seconds / a:.2f}x |"
            )
    for tag, tree in trees.items():
        course_s, fit_s, whole_s = single(opts.repeats, tree)
        print(f"| one job | (a) course loop, one model{tag} | {course_s:.3f} | | 1.00x |")
        print(f"| one job | (d) train(cfg): fit{tag} | {fit_s:.3f} | | {fit_s / course_s:.2f}x |")
        print(
            f"| one job | (d) train(cfg): whole call{tag} | {whole_s:.3f} | | "
            f"{whole_s / course_s:.2f}x |"
        )


if __name__ == "__main__":
    main()
