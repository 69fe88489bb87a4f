"""Seconds per style-transfer step (VGG19, 256 px demo images, RMSprop) on this machine.

    python benchmarks/style_speed.py [--device cpu|cuda] [--steps 20] [--size 256]

Uses random VGG19 weights (the time per step does not depend on them). Reports the median
time of the steps after the first (warm-up) over --repeats runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from revisions import history


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp())
    env = {**os.environ, "DLEXP_OUTPUTS": str(out)}
    per_step = []
    for i in range(args.repeats):
        run = out / f"run{i}"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "dlexp",
                "train",
                "experiment=style_transfer",
                "model.weights=none",
                f"device={args.device}",
                f"data.size={args.size}",
                "data.repeat=1",
                f"trainer.epochs={args.steps // 2}",
                "trainer.checkpoint=false",
                "trainer.progress=none",
                f"hydra.run.dir={run}",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        # 2 steps an epoch (content, style rows); the first epoch warms up
        per_step += [h["train_seconds"] / 2 for h in history(run)[1:]]
    print(
        f"style transfer, VGG19, {args.size} px content (demo, {args.size}x{int(args.size * 1.25)}), "
        f"device {args.device}: {statistics.median(per_step):.3f} s per step "
        f"(median of {len(per_step)} steps over {args.repeats} runs)"
    )


if __name__ == "__main__":
    main()
