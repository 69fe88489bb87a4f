"""A short check of the GPU path (CUDA, bf16/fp16 autocast, torch.compile) on lent hardware.

    python benchmarks/gpu_check.py [--out results.md]

Full-size generated MNIST (60,000 train / 10,000 test, the real shapes) is written to a
temporary root; the course's CNN (and its MNIST FFN) trains 2 epochs per setting through
`dlexp train device=cuda` and the second epoch's time is reported (the first includes cuDNN
autotuning and warm-up). Then the one engine's two steps on the GPU: an Iris grid (8 rates x
2 optimizers) through the batched launcher (stacked groups) and through Hydra's basic launcher
(one job after another), their wall times and the largest relative difference of any job's
final metric between the two.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from revisions import history  # noqa: E402

import fake_data  # noqa: E402

CNN = ["model=cnn"]
MLP = ["model=ann", "model.hidden=[64,32,32]", "data.batch_size=32", "trainer.precision=fp32"]
SETTINGS = [
    ("CNN, batch 32, fp32", [*CNN, "data.batch_size=32", "trainer.precision=fp32"]),
    ("CNN, batch 32, bf16", [*CNN, "data.batch_size=32", "trainer.precision=bf16"]),
    ("CNN, batch 256, fp32", [*CNN, "data.batch_size=256", "trainer.precision=fp32"]),
    ("CNN, batch 256, bf16", [*CNN, "data.batch_size=256", "trainer.precision=bf16"]),
    ("CNN, batch 256, fp16 (GradScaler)", [*CNN, "data.batch_size=256", "trainer.precision=fp16"]),
    (
        "CNN, batch 256, bf16, compile",
        [*CNN, "data.batch_size=256", "trainer.precision=bf16", "trainer.compile=true"],
    ),
    # The course's MNIST FFN (784-64-32-32-10).
    ("MLP, batch 32, fp32", MLP),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--parity-only", action="store_true", help="only the launchers' check")
    args = parser.parse_args()
    import torch

    tmp = Path(tempfile.mkdtemp())
    fake_data.mnist_root(tmp / "data", n_train=60_000, n_test=10_000)
    env = {**os.environ, "DLEXP_DATA": str(tmp / "data"), "DLEXP_OUTPUTS": str(tmp / "out")}
    lines = [
        f"GPU check: {torch.cuda.get_device_name()}, torch {torch.__version__}",
        "MNIST CNN and FFN (course), generated full-size MNIST, 2 epochs, device=cuda; epoch 2",
        "",
        "| setting | epoch 2 s | samples/s | test acc | wall s (process) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, overrides in [] if args.parity_only else SETTINGS:
        before = set((tmp / "out").glob("runs/*"))
        base = ["data=mnist", "device=cuda", "trainer.epochs=2", "trainer.progress=log"]
        result, wall = timed_dlexp([*base, *overrides], env)
        if result.returncode != 0:
            lines.append(
                f"| {name} | FAILED: {result.stderr.strip().splitlines()[-1][:200]} | | | |"
            )
            continue
        (run,) = set((tmp / "out").glob("runs/*")) - before
        m = json.loads((run / "metrics.json").read_text())
        h = {**history(run)[-1], "samples_per_s": m["samples_per_s"]}
        compiled = " (compile logged)" if "torch.compile" in result.stdout else ""
        lines.append(
            f"| {name}{compiled} | {h['train_seconds']:.2f} | {h['samples_per_s']:,.0f} "
            f"| {m['test/acc']:.4f} | {wall:.1f} |"
        )
        print(lines[-1], flush=True)
    for precision in ("fp32", "auto"):
        lines += ["", *launcher_parity(tmp, env, precision)]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def timed_dlexp(args: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float]:
    """`dlexp train <args>` in its own process, and its wall time."""
    import time

    tic = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "dlexp", "train", *args], env=env, capture_output=True, text=True
    )
    return result, time.perf_counter() - tic


def launcher_parity(tmp: Path, env: dict, precision: str = "fp32") -> list[str]:
    """The Iris grid on the GPU through both launchers: wall times, largest difference (in
    fp32 they differ by float reordering only; bf16 rounds every product to 8 bits)."""
    grid = [
        "data=iris",
        "device=cuda",
        f"trainer.precision={precision}",
        "trainer.epochs=50",
        "trainer.progress=none",
        "optimizer=sgd,adam",
        "optimizer.lr=0.001,0.003,0.01,0.02,0.03,0.05,0.07,0.1",
    ]
    finals, lines = {}, ["| launcher | wall s | jobs | status |", "| --- | ---: | ---: | --- |"]
    for launcher in ("batched", "basic"):
        folder = tmp / f"grid-{launcher}-{precision}"
        result, wall = timed_dlexp(
            ["-m", *grid, f"hydra/launcher={launcher}", f"hydra.sweep.dir={folder}"], env
        )
        finals[launcher] = {
            p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/metrics.json")
        }
        status = "ok" if result.returncode == 0 else result.stderr.strip()[-200:]
        lines.append(f"| {launcher} | {wall:.1f} | {len(finals[launcher])} | {status} |")
    worst = (0.0, "")
    for name, ref in finals["basic"].items():
        ours = finals["batched"].get(name, {})
        for key, value in ref.items():
            if key.startswith(("train/", "val/", "test/")) and isinstance(value, float):
                diff = abs(ours.get(key, float("nan")) - value) / max(abs(value), 1e-6)
                worst = max(worst, (diff, f"{name} {key}: {ours.get(key)} vs {value}"))
    lines.append(
        f"\n{precision}: largest relative difference of a final metric, batched vs basic: "
        f"{worst[0]:.2e} ({worst[1]})"
    )
    return lines


if __name__ == "__main__":
    main()
