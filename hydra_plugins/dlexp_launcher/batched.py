"""dlexp's batched launcher as a Hydra plugin: `hydra/launcher=batched` (see dlexp.launcher).

Hydra finds launchers in the `hydra_plugins` namespace package; the work is in dlexp.launcher.
"""

from collections.abc import Sequence  # (no __future__ annotations: Hydra scans this

# module without registering it, and dataclasses then cannot resolve string annotations)
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.launcher import Launcher


@dataclass
class BatchedLauncherConf:
    _target_: str = "hydra_plugins.dlexp_launcher.batched.BatchedLauncher"
    max_group: int = 4096  # jobs trained together at most (memory grows with the group)


ConfigStore.instance().store(
    group="hydra/launcher", name="batched", node=BatchedLauncherConf, provider="dlexp"
)


class BatchedLauncher(Launcher):
    def __init__(self, max_group: int = 4096) -> None:
        self.max_group = max_group
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from dlexp.launcher import JobComposer

        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        # The sweeper validates a batch by composing each job through this same loader:
        # one JobComposer answers it and the launch (see dlexp.launcher).
        loader = hydra_context.config_loader
        self.composer = JobComposer(loader.load_sweep_config)
        loader.load_sweep_config = self.composer.load_sweep_config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence:
        from dlexp.launcher import launch

        return launch(self, job_overrides, initial_job_idx)
