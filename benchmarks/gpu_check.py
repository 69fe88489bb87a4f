"""A short check of the GPU path (CUDA, bf16/fp16 autocast, torch.compile) on lent hardware.

    python benchmarks/gpu_check.py [--out results.md]

Full-size generated MNIST (60,000 train / 10,000 test, the real shapes) is written to a
temporary root; the course's CNN (and its MNIST FFN, closed-form gradients against autograd's)
trains 2 epochs per setting through `dlexp train device=cuda` and the second epoch's time is
reported (the first includes cuDNN autotuning and warm-up).
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
    # The course's MNIST FFN (784-64-32-32-10): closed-form gradients against autograd's on
    # the GPU; the two test accuracies should agree.
    ("MLP, batch 32, fp32, closed form", MLP),
    ("MLP, batch 32, fp32, autograd", [*MLP, "trainer.closed_form=false"]),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
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
    for name, overrides in SETTINGS:
        before = set((tmp / "out").glob("runs/*"))
        import time

        tic = time.perf_counter()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "dlexp",
                "train",
                "data=mnist",
                "device=cuda",
                "trainer.epochs=2",
                "trainer.progress=log",
                *overrides,
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - tic
        if result.returncode != 0:
            lines.append(
                f"| {name} | FAILED: {result.stderr.strip().splitlines()[-1][:200]} | | | |"
            )
            continue
        (run,) = set((tmp / "out").glob("runs/*")) - before
        m = json.loads((run / "metrics.json").read_text())
        h = m["history"][-1]
        compiled = " (compile logged)" if "torch.compile" in result.stdout else ""
        lines.append(
            f"| {name}{compiled} | {h['train_seconds']:.2f} | {h['samples_per_s']:,.0f} "
            f"| {m['test/acc']:.4f} | {wall:.1f} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
