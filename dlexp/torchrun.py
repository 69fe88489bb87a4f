"""One process of a run that `dlexp train trainer.devices=N` started under torchrun
(`python -m dlexp.torchrun`; see dlexp.run.launch): the run's config and folder come through
the environment."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch.distributed as dist
from omegaconf import OmegaConf

from dlexp.progress import console_handler
from dlexp.run import LAUNCHED, train


def main() -> None:
    logger = logging.getLogger("dlexp")
    logger.setLevel(logging.INFO)
    logger.addHandler(console_handler())
    try:
        train(OmegaConf.create(os.environ["DLEXP_RUN_CONFIG"]), Path(os.environ[LAUNCHED]))
    finally:
        # Leave the group while the interpreter is alive: gloo's worker threads torn down at
        # exit can abort the process ("terminate called without an active exception": once in
        # the suite's runs; pytorch/pytorch#190489).
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
