"""Run `dlexp` in this process and send it signals at known optimizer steps.

    python signal_at_step.py <STEP>:<SIGNAL>[,<STEP>:<SIGNAL>...] <dlexp arguments...>

Fault tests use it to kill or interrupt a real process at an exact step, so that they never
depend on timing: a SIGKILL at step 53 of a run that checkpoints every 7 steps always leaves
the checkpoint of step 49.
"""

from __future__ import annotations

import os
import signal
import sys

from torch.optim.optimizer import register_optimizer_step_pre_hook

plan: dict[int, list[int]] = {}
for item in sys.argv[1].split(","):
    step, name = item.split(":")
    plan.setdefault(int(step), []).append(getattr(signal, name).value)
count = 0


def hook(optimizer, args, kwargs) -> None:
    global count
    count += 1
    for signum in plan.get(count, []):
        os.kill(os.getpid(), signum)


register_optimizer_step_pre_hook(hook)
sys.argv = ["dlexp", *sys.argv[2:]]
from dlexp.cli import run  # noqa: E402

run()
