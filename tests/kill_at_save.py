"""Run `dlexp` in this process; SIGKILL it when a stacked group has saved a given epoch.

    python kill_at_save.py <epochs of the group>:<epoch> <dlexp arguments...>

The batched launcher writes a group's checkpoints together (one sync, then renames); the
kill comes right after they are in place, so a test knows exactly what a resume finds.
"""

from __future__ import annotations

import os
import signal
import sys

from dlexp.trainer import Trainer

group_epochs, at_epoch = (int(v) for v in sys.argv[1].split(":"))
save = Trainer._save


def save_then_kill(self, jobs) -> None:
    save(self, jobs)
    stacked = self.step.n > 1
    if stacked and self.cfg.epochs == group_epochs and self.loop.epoch == at_epoch:
        os.kill(os.getpid(), signal.SIGKILL)


Trainer._save = save_then_kill
sys.argv = ["dlexp", *sys.argv[2:]]
from dlexp.cli import run  # noqa: E402

run()
