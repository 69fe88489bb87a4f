"""The batched launcher (`hydra/launcher=batched`): a sweep's jobs composed, grouped, and the
groups of small models trained together (dlexp.stacked); the rest run one by one as Hydra's
basic launcher runs them.

Hydra composes each job's config from scratch (~50 ms); a 2,000-job grid would spend minutes
on it. Jobs whose overrides differ from the previous full composition only in plain values
(optimizer.lr=0.01, seed=3) get a copy of it with those values set, as Hydra would set them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import Container, DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger("dlexp")


class JobComposer:
    """Sweep job configs from as few full compositions as it can: a job whose overrides
    differ from the last composed job's only in plain values is a copy of it with those values
    set, as Hydra sets them. Stands in for the config loader's `load_sweep_config` (Hydra's
    basic sweeper composes every job to validate the batch, then the launcher composes them
    again: both get the same configs, the second time from memory)."""

    def __init__(self, load_sweep_config) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.full = load_sweep_config  # the config loader's own
        self.parser = OverridesParser.create()
        self.base: DictConfig | None = None
        self.base_overrides: list[str] = []
        self.made: dict[tuple[str, ...], DictConfig] = {}

    def load_sweep_config(
        self, master_config: DictConfig, sweep_overrides: list[str]
    ) -> DictConfig:
        from hydra._internal.config_loader_impl import get_overrides_dirname

        master, overrides = master_config, list(sweep_overrides)  # (Hydra passes them by name)
        if tuple(overrides) in self.made:
            return self.made[tuple(overrides)]
        config = None
        if self.base is not None and len(overrides) == len(self.base_overrides):
            config = _derive(self.base, self.base_overrides, overrides, self.parser)
        if config is None:
            self.base, self.base_overrides = self.full(master, overrides), overrides
            config = copy.deepcopy(self.base)
        else:
            job = config.hydra.job
            parsed = self.parser.parse_overrides(overrides)
            parsed = [o for o in parsed if not o.is_hydra_override()]
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.overrides.task = [o.input_line for o in parsed]
                job.override_dirname = get_overrides_dirname(
                    overrides=parsed,
                    kv_sep=job.config.override_dirname.kv_sep,
                    item_sep=job.config.override_dirname.item_sep,
                    exclude_keys=list(job.config.override_dirname.exclude_keys),
                )
        OmegaConf.copy_cache(from_config=master, to_config=config)  # the same ${now:}
        self.made[tuple(overrides)] = config
        return config

    def jobs(self, master: DictConfig, job_overrides, first: int) -> list[DictConfig]:
        """Each job's full config (with `hydra`), numbered from `first`; forgotten here."""
        configs = []
        for i, overrides in enumerate(job_overrides):
            config = self.load_sweep_config(master, overrides)
            self.made.pop(tuple(overrides), None)
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.job.id = config.hydra.job.num = first + i
            configs.append(config)
        return configs


def _derive(base: DictConfig, base_overrides: list[str], overrides: list[str], parser):
    """`base` with the values that `overrides` change set, or None when a change is more
    than a value (a config group, an added or deleted key, a hydra setting)."""
    from hydra.core.override_parser.types import OverrideType

    changed = [(o, b) for o, b in zip(overrides, base_overrides, strict=True) if o != b]
    parsed = parser.parse_overrides([o for o, _ in changed])
    before = parser.parse_overrides([b for _, b in changed])
    for new, old in zip(parsed, before, strict=True):
        key = new.key_or_group
        if (
            new.type != OverrideType.CHANGE
            or new.package is not None
            or new.is_sweep_override()
            or key != old.key_or_group
            or key.startswith("hydra.")
            or isinstance(OmegaConf.select(base, key, default=base), Container)
        ):
            return None
    config = copy.deepcopy(base)
    for new in parsed:
        OmegaConf.update(config, new.key_or_group, new.value(), merge=True)
    return config


def _task_config(config: DictConfig) -> DictConfig:
    """The job's config without `hydra`, as the job function gets it."""
    return OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    """Hydra's Launcher.launch: one JobReturn per job, in order."""
    from hydra.core.utils import configure_log, run_job, setup_globals

    from dlexp.stacked import group_key, why_not_stacked

    setup_globals()
    config, context = launcher.config, launcher.hydra_context
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    configs = launcher.composer.jobs(config, job_overrides, initial_job_idx)
    groups: dict[str, list[int]] = defaultdict(list)
    alone: dict[int, str] = {}
    tasks = [_task_config(job) for job in configs]
    for i, task in enumerate(tasks):
        reason = why_not_stacked(task)
        if reason is None:
            groups[group_key(task)].append(i)
        else:
            alone[i] = reason
    size = max(1, int(launcher.max_group))
    batches = []
    for members in groups.values():
        if len(members) == 1:
            alone[members[0]] = "no other job shares its model, data and settings"
            continue
        batches += [members[k : k + size] for k in range(0, len(members), size)]
    print(
        f"dlexp: batched launcher: {sum(map(len, batches))} of {len(configs)} jobs in "
        f"{len(batches)} stacked group(s), {len(alone)} one by one",
        flush=True,
    )
    for i, reason in sorted(alone.items()):
        print(f"dlexp: job {configs[i].hydra.job.num} runs alone: {reason}", flush=True)
    results: list[Any] = [None] * len(configs)
    for members in batches:
        configure_log(configs[members[0]].hydra.job_logging, config.hydra.verbose)
        for i, ret in zip(
            members,
            _run_group([configs[i] for i in members], [tasks[i] for i in members], context),
            strict=True,
        ):
            results[i] = ret
    for i in sorted(alone):
        results[i] = run_job(
            hydra_context=context,
            task_function=launcher.task_function,
            config=configs[i],
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )  # (each job configures its own logging, as under Hydra's basic launcher)
    return results


def _job_return(config: DictConfig, task: DictConfig, value: Any, failed: bool = False):
    from hydra.core.utils import JobReturn, JobStatus

    return JobReturn(
        overrides=list(config.hydra.overrides.task),
        cfg=task,
        hydra_cfg=config,
        working_dir=os.getcwd(),
        task_name=config.hydra.job.name,
        status=JobStatus.FAILED if failed else JobStatus.COMPLETED,
        _return_value=value,
    )


def _run_group(configs: list[DictConfig], tasks: list[DictConfig], context) -> list:
    """Open each job's run folder (dlexp.run decides: new, continued or finished), train
    the open ones together, return each job's objective."""
    import sys

    from hydra.core.hydra_config import HydraConfig

    from dlexp.checkpoint import one_sync
    from dlexp.fit import fit
    from dlexp.hydra_app import sweep_job_failed
    from dlexp.run import IN_HYDRA_JOB, objective, open_run
    from dlexp.trainer import Interrupted

    first, last = configs[0].hydra.job.num, configs[-1].hydra.job.num
    print(f"dlexp: sweep jobs {first}-{last}: trained together as one stacked model", flush=True)
    values: list[Any] = [None] * len(configs)
    by_epoch: dict[tuple, list[int]] = defaultdict(list)  # jobs continue where they stopped
    token = IN_HYDRA_JOB.set(True)
    try:
        with contextlib.ExitStack() as stack:
            runs = {}
            opening = stack.enter_context(contextlib.ExitStack())
            opening.enter_context(one_sync())  # the runs' records reach the disk in one sync
            for i, (config, task) in enumerate(zip(configs, tasks, strict=True)):
                folder = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
                with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
                    config.hydra.runtime.output_dir = str(folder.absolute())
                HydraConfig.instance().set_config(config)
                folder.mkdir(parents=True, exist_ok=True)
                try:
                    run = stack.enter_context(open_run(task, log_file=False))
                except Exception as exc:
                    values[i] = sweep_job_failed(task, config.hydra, exc)
                    continue
                if run.done is not None:
                    values[i] = objective(run.cfg, run.done)
                    continue
                runs[i] = run
                loop = run.resume["loop"] if run.resume else {}
                by_epoch[tuple(loop.get(k, 0) for k in ("epoch", "batch", "step"))].append(i)
            opening.close()
            for members in by_epoch.values():
                group = [runs[i] for i in members]
                try:
                    finals = fit(group)
                except Interrupted as stop:
                    print(f"dlexp: {stop}", file=sys.stderr)
                    raise SystemExit(stop.exit_code) from None
                except Exception as exc:
                    for i in members:
                        HydraConfig.instance().set_config(configs[i])
                        values[i] = sweep_job_failed(tasks[i], configs[i].hydra, exc)
                    continue
                for i, final in zip(members, finals, strict=True):
                    values[i] = float("nan") if final is None else objective(runs[i].cfg, final)
    finally:
        IN_HYDRA_JOB.reset(token)
    returns = []
    for config, task, value in zip(configs, tasks, values, strict=True):
        ret = _job_return(config, task, value)
        context.callbacks.on_job_end(config=config, job_return=ret)
        returns.append(ret)
    return returns
