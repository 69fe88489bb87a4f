"""dlexp: deep-learning experiments from the command line and from Python (Hydra configs, one
shared trainer, TensorBoard).

From a notebook or a script (the same overrides as `dlexp train`):

    import dlexp
    run = dlexp.train("experiment=ann_iris")
    run.metrics["test/acc"], run.history["train/loss"]
    sweep = dlexp.sweep("experiment=ann_iris", "optimizer=sgd,adam")

`config`, `train`, `sweep`, `load`, `Run` and `Sweep` are dlexp.api's; they are imported on
first use, so that `dlexp --help` does not wait for PyTorch.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Run", "Sweep", "__version__", "config", "load", "sweep", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from dlexp import api

        return getattr(api, name)
    raise AttributeError(f"module 'dlexp' has no attribute {name!r}")
