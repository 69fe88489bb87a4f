"""MNIST CNN speed: the course's loop against dlexp, each contender in its own process.

    python benchmarks/mnist_speed.py [--repeats 3] [--epochs 3] [--target 0.98] [--against REV]

Contenders, on the real MNIST digits from ../shared/data (8,000 train / 2,000 test; generated
digits-like data of the same shape when that folder is absent, and the report says so):
  (a) course  the course's loop (benchmarks/course_loop.py): per-sample ToTensor/Normalize,
              DataLoader, batch 32, Adam 1e-3; run on until it reaches the target accuracy
  (b) dlexp   the same model, batch size, optimizer and epochs through `dlexp train`
  (c) fast    `dlexp train experiment=mnist_cnn_fast`
Reported: samples/s, seconds per epoch, test accuracy after --epochs, training seconds until
the test accuracy first reaches --target; medians over --repeats (seeds 0, 1, ...); the
ratios against (a). Also the wall time of `dlexp train` (the Iris default) and `dlexp --help`,
from process start to exit. --against REV also runs (b) and (c) with the dlexp of git revision
REV, in the same seeds' loop (benchmarks/revisions.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from mnist_data import prepare  # noqa: E402
from revisions import checkout, env_for, history  # noqa: E402


def run_course(root: Path, seed: int, epochs: int, target: float) -> list[dict]:
    out = subprocess.run(
        [
            sys.executable,
            str(HERE / "course_loop.py"),
            "--root",
            str(root),
            "--seed",
            str(seed),
            "--epochs",
            str(epochs),
            "--target",
            str(target),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def run_dlexp(args: list[str], env: dict, seed: int) -> list[dict]:
    out_root = Path(env["DLEXP_OUTPUTS"])
    before = set(out_root.glob("runs/*"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dlexp",
            "train",
            *args,
            f"seed={seed}",
            "trainer.test_every_epoch=true",
            "trainer.progress=none",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    (run,) = set(out_root.glob("runs/*")) - before
    # Every epoch trains on the whole training split (the log's "N train / ..." line).
    log = (run / "train.log").read_text()
    n_train = int(log.split(" train / ")[0].rsplit(" ", 1)[-1])
    return [
        {
            "epoch": h["epoch"],
            "train_seconds": h["train_seconds"],
            "test_acc": h["test/acc"],
            "samples": n_train,
        }
        for h in history(run)
    ]


def summarise(epochs: list[dict], n: int, target: float) -> dict:
    first = epochs[:n]
    seconds = sum(e["train_seconds"] for e in first)
    elapsed, to_target = 0.0, None
    for e in epochs:
        elapsed += e["train_seconds"]
        if e["test_acc"] >= target:
            to_target = elapsed
            break
    return {
        "samples_per_s": sum(e["samples"] for e in first) / seconds,
        "epoch_s": seconds / len(first),
        "test_acc": first[-1]["test_acc"],
        "to_target_s": to_target,
    }


def wall(cmd: list[str], env: dict) -> float:
    tic = time.perf_counter()
    subprocess.run(cmd, env=env, capture_output=True, check=True)
    return time.perf_counter() - tic


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.98)
    parser.add_argument("--against", default=None, help="a git revision to time beside this one")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="dlexp-bench-"))
    kind = prepare(tmp / "data")
    env = {**os.environ, "DLEXP_DATA": str(tmp / "data"), "DLEXP_OUTPUTS": str(tmp / "outputs")}
    same = [
        "model=cnn",
        "data=mnist",
        "data.val_fraction=0",
        "data.batch_size=32",
        "optimizer=adam",
        "optimizer.lr=0.001",
        f"trainer.epochs={args.epochs}",
    ]
    contenders = {
        "(a) course loop": lambda s: run_course(tmp / "data", s, args.epochs, args.target)
    }
    trees = {"": None, **({f" [{args.against}]": checkout(args.against)} if args.against else {})}
    for tag, tree in trees.items():
        tree_env = env_for(tree, env)
        contenders[f"(b) dlexp, same settings{tag}"] = partial(run_dlexp, same, tree_env)
        contenders[f"(c) dlexp experiment=mnist_cnn_fast{tag}"] = partial(
            run_dlexp, ["experiment=mnist_cnn_fast"], tree_env
        )
    results = {name: [] for name in contenders}
    for seed in range(args.repeats):
        for name, run in contenders.items():
            epochs = run(seed)
            n = args.epochs if "fast" not in name else len(epochs)
            results[name].append(summarise(epochs, n, args.target))
            print(f"seed {seed} {name}: {results[name][-1]}", file=sys.stderr)

    iris = [wall([sys.executable, "-m", "dlexp", "train"], env) for _ in range(args.repeats)]
    helps = [wall([sys.executable, "-m", "dlexp", "--help"], env) for _ in range(args.repeats)]

    ref = {
        k: median([r[k] for r in results["(a) course loop"]])
        for k in ("samples_per_s", "to_target_s")
    }
    print(
        f"\nMNIST CNN, {kind} digits (8,000 train / 2,000 test), medians of {args.repeats} "
        f"repeats (seeds 0..{args.repeats - 1}), torch {torch_version()}, {os.cpu_count()} CPUs\n"
    )
    print(
        f"| contender | samples/s | s/epoch | test acc after {args.epochs} ep. "
        f"| train s to {args.target:.0%} | speed vs (a) | time to {args.target:.0%} vs (a) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, rows in results.items():
        m = {k: median([r[k] for r in rows]) for k in rows[0]}
        to = f"{m['to_target_s']:.1f}" if m["to_target_s"] is not None else "not reached"
        speed = m["samples_per_s"] / ref["samples_per_s"]
        ratio = (
            f"{m['to_target_s'] / ref['to_target_s']:.2f}"
            if m["to_target_s"] is not None and ref["to_target_s"]
            else "-"
        )
        print(
            f"| {name} | {m['samples_per_s']:,.0f} | {m['epoch_s']:.2f} | {m['test_acc']:.4f} "
            f"| {to} | {speed:.2f}x | {ratio} |"
        )
    print(
        f"\n`dlexp train` (Iris default), process start to exit: {median(iris):.2f} s "
        f"(runs: {', '.join(f'{t:.2f}' for t in iris)}); `dlexp --help`: {median(helps):.2f} s"
    )


def torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
