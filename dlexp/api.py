"""dlexp from Python (a notebook, a script): the command line's configs, runs and sweeps.

    import dlexp
    run = dlexp.train("experiment=ann_iris", "trainer.epochs=300")
    run.metrics["test/acc"], run.history["train/loss"], run.model()
    sweep = dlexp.sweep("experiment=ann_iris", "optimizer=sgd,adam")
    sweep.table()                    # dlexp report's rows
    dlexp.load("outputs/runs/...")   # any finished run or sweep folder

The overrides are those of `dlexp train`; runs and sweeps land where the command puts them
(outputs/ under the working folder, or DLEXP_OUTPUTS), so TensorBoard and `dlexp report` see
them too.
"""

from __future__ import annotations

import json
import math
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from dlexp.errors import DlexpError

if TYPE_CHECKING:
    import numpy as np
    import torch


def config(*overrides: str) -> DictConfig:
    """The config `dlexp train <overrides>` would run (`dlexp train ... --cfg job`), composed
    here: change it and give it to `train`."""
    from dlexp.cli import compose_train, config_dir
    from dlexp.hydra_app import composition_error

    try:
        return compose_train(*overrides)
    except Exception as err:  # Hydra's message, reworded as the command line rewords it
        chain, cause = [], err
        while cause is not None:
            chain.append(str(cause))
            cause = cause.__cause__ or cause.__context__
        text = composition_error("\n".join(chain) + "\n", list(overrides), str(config_dir()))
        if text.startswith("dlexp: error: "):
            raise DlexpError(text.removeprefix("dlexp: error: ").strip()) from None
        raise


def train(*overrides: str | DictConfig, run_dir: str | Path | None = None) -> Run:
    """Train one run, as `dlexp train <overrides>` does, and return it. Give overrides
    ("model=cnn", "trainer.epochs=3") or a config from `config()`. The run lands in a new
    folder under outputs/runs (or `run_dir`); progress is printed as the command prints it."""
    from dlexp.progress import log_to_console
    from dlexp.run import train_in

    if len(overrides) == 1 and isinstance(overrides[0], DictConfig):
        cfg = overrides[0]
    elif all(isinstance(o, str) for o in overrides):
        cfg = config(*overrides)  # type: ignore[arg-type]
    else:
        raise DlexpError(
            "dlexp.train takes override strings ('model=cnn', 'trainer.epochs=3') or one config "
            "from dlexp.config(...), not both."
        )
    log_to_console()
    folder, _ = train_in(cfg, Path(run_dir) if run_dir else None)
    return Run(folder)


def sweep(*overrides: str) -> Sweep:
    """A Hydra multirun, as `dlexp train -m <overrides>` (comma lists, ranges, the sweep a
    file states); returns it when every job has ended. Jobs that fail are recorded in the
    sweep (their status and message are in `table()`) and do not stop the others."""
    from dlexp.cli import config_dir
    from dlexp.hydra_app import hydra_train
    from dlexp.report import SweepSummary

    SweepSummary.folder = None
    try:
        hydra_train(["-m", *overrides], str(config_dir()))
    except SystemExit:  # failed jobs (the sweep exists) or a config that did not compose
        if SweepSummary.folder is None:
            raise DlexpError(
                "the sweep did not start: the overrides " + " ".join(overrides) + " did not "
                "compose (the message above says why)."
            ) from None
    return Sweep(SweepSummary.folder)


def load(path: str | Path) -> Run | Sweep:
    """A finished (or running) run folder as a Run, or a sweep folder as a Sweep."""
    path = Path(path).expanduser()
    if (path / ".hydra" / "config.yaml").is_file() or (path / "checkpoints").is_dir():
        return Run(path)
    if path.is_dir() and any(
        (job / ".hydra" / "overrides.yaml").is_file() for job in path.iterdir()
    ):
        return Sweep(path)
    raise DlexpError(
        f"{path} is neither a run folder (one with .hydra/config.yaml, e.g. outputs/runs/<name>) "
        "nor a sweep folder (one with job sub-folders, e.g. outputs/sweeps/<time>)."
    )


class Run:
    """A run folder: its config, final metrics, per-epoch history and trained model."""

    def __init__(self, folder: str | Path) -> None:
        self.dir = Path(folder)

    def __repr__(self) -> str:
        return f"dlexp.Run({str(self.dir)!r})"

    @property
    def config(self) -> DictConfig:
        """The config the run was trained with (its .hydra/config.yaml)."""
        return OmegaConf.load(self.dir / ".hydra" / "config.yaml")

    @property
    def metrics(self) -> dict[str, Any]:
        """metrics.json: the final train/val/test metrics, status, epochs and time."""
        path = self.dir / "metrics.json"
        if not path.is_file():
            raise DlexpError(f"{self.dir} has no metrics.json: the run has not finished.")
        return json.loads(path.read_text())

    @cached_property
    def history(self) -> dict[str, np.ndarray]:
        """Every epoch's scalars as arrays of one length (`epoch`, `train/loss`, `val/acc`,
        `lr`, ...), read from the run's TensorBoard events; NaN where an epoch has no value
        (the test metrics, recorded at the end)."""
        import numpy as np

        from dlexp.record import read_history

        rows = read_history(self.dir)
        names = list(dict.fromkeys(k for row in rows for k in row))
        return {k: np.array([row.get(k, math.nan) for row in rows]) for k in names}

    def dataframe(self):
        """The history as a pandas DataFrame, one row per epoch (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise DlexpError(
                "Run.dataframe() needs pandas (pip install pandas); Run.history holds the same "
                "numbers as numpy arrays."
            ) from None
        return pd.DataFrame(self.history).set_index("epoch")

    def data(self):
        """The run's data as it trained on them (dlexp.data.Data: `.train`, `.val`, `.test`
        splits of `.x` and `.y`, and `.prepare(x)`, which turns stored images into the model's
        input as training did)."""
        from dlexp.data import load_data

        cfg = self.config
        return load_data(cfg.data, cfg.seed)

    @cached_property
    def classes(self) -> list[str]:
        """The class names, in the order of the model's outputs (empty for regression)."""
        from dlexp.checkpoint import find_checkpoint, load_checkpoint

        return list(load_checkpoint(find_checkpoint(self.dir))["meta"]["class_names"])

    def model(self, checkpoint: str | None = None) -> torch.nn.Module:
        """The trained model in eval mode on the CPU: best.pt's weights when the run kept a
        best checkpoint, else last.pt's (or name one: "best", "last")."""
        from dlexp.build import load_run

        which = checkpoint or (
            "best" if (self.dir / "checkpoints" / "best.pt").is_file() else "last"
        )
        return load_run(self.dir, which).model.eval()


class Sweep:
    """A sweep folder: its jobs as runs and `dlexp report`'s table."""

    def __init__(self, folder: str | Path) -> None:
        self.dir = Path(folder)

    def __repr__(self) -> str:
        return f"dlexp.Sweep({str(self.dir)!r})"

    @property
    def runs(self) -> list[Run]:
        """The jobs, in job order."""
        from dlexp.report import collect

        return [Run(row["folder"]) for row in collect(self.dir)]

    def table(self, metric: str | None = None, last: int | None = None) -> list[dict[str, Any]]:
        """`dlexp report`'s rows, best first: each job's `job` folder name, swept values
        (`overrides`), `status`, `time_s` and final metrics; `metric` and `last` as the
        command's (sort by a metric's mean over each job's last k epochs)."""
        from dlexp.report import score

        return score(self.dir, metric, last).rows

    def report(self, metric: str | None = None, last: int | None = None) -> None:
        """`dlexp report <sweep>`: print the table, write summary.csv and summary.png."""
        from dlexp.report import report

        report(self.dir, metric, last=last)

    def dataframe(self, metric: str | None = None, last: int | None = None):
        """`table()` as a pandas DataFrame: one row per job, a column per swept key and metric
        (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise DlexpError(
                "Sweep.dataframe() needs pandas (pip install pandas); Sweep.table() holds the "
                "same numbers as dicts."
            ) from None
        from dlexp.report import override_value

        rows = [
            {k: override_value(v) for k, v in r["overrides"].items()}
            | {k: v for k, v in r.items() if k not in ("overrides", "folder")}
            for r in self.table(metric, last)
        ]
        return pd.DataFrame(rows)
