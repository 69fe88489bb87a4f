"""`dlexp report <sweep folder>`: one row per job, the best marked, a CSV and the course's plot.

Works on a finished, partly failed or still running sweep: a job folder without metrics.json
is reported as running (or never started).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dlexp.errors import DlexpError
from dlexp.tasks.base import higher_is_better

try:  # Hydra's callback base class; the summary is written when a multirun ends
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object


SCORES = ("train/", "val/", "test/", "weights/")  # metrics.json's keys that the table shows


def override_value(text: str) -> Any:
    """An override's value as a number when it is one (for sorting and plotting)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def collect(sweep: Path) -> list[dict[str, Any]]:
    """One dict per job: its folder, overrides, status, time and final metrics."""
    if not sweep.is_dir():
        raise DlexpError(
            f"{sweep} is not a folder; give a sweep folder such as outputs/sweeps/<time>."
        )
    rows = []
    number = lambda p: int(p.name.split("_")[0]) if p.name.split("_")[0].isdigit() else -1  # noqa: E731
    for job in sorted(sweep.iterdir(), key=lambda p: (number(p), p.name)):  # 9 before 10
        overrides_file = job / ".hydra" / "overrides.yaml"
        if not overrides_file.is_file():
            continue
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        row: dict[str, Any] = {"job": job.name, "folder": job}
        row["overrides"] = dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)
        metrics_file = job / "metrics.json"
        if metrics_file.is_file():
            metrics = json.loads(metrics_file.read_text())
            row["status"] = metrics.get("status", "?")
            row["time_s"] = metrics.get("time_s")
            row["monitor"] = metrics.get("monitor")
            if row["status"] in ("failed", "diverged"):
                row["reason"] = metrics.get("message", "")
            row.update({k: v for k, v in metrics.items() if k.startswith(SCORES)})
        else:
            row["status"] = "running"
        rows.append(row)
    if not rows:
        raise DlexpError(
            f"{sweep} holds no sweep jobs (no sub-folder with .hydra/overrides.yaml); give the "
            "folder of a `dlexp train -m ...` sweep, e.g. outputs/sweeps/<time>."
        )
    return rows


def swept_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The override keys whose values differ between jobs, in command-line order."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row["overrides"] if k not in keys]
    return [k for k in keys if len({str(r["overrides"].get(k)) for r in rows}) > 1]


def pick_metric(rows: list[dict[str, Any]], metric: str | None) -> tuple[str, bool]:
    """The metric to sort by and whether higher is better: by default the objective the jobs
    were trained for (what picked their best.pt and what the sweeper was given), never a
    test metric unless asked."""
    available = {k for r in rows for k in r if k.startswith(("train/", "val/", "test/"))}
    if metric is None:
        chosen = [r["monitor"] for r in rows if r.get("monitor") in available]
        metric = max(set(chosen), key=chosen.count) if chosen else None
    if metric is None:
        metric = next((m for m in ("val/acc", "val/loss", "train/loss") if m in available), None)
    if metric is None:
        return "", True
    if available and metric not in available:
        raise DlexpError(
            f"metric={metric} is not in this sweep's results; use one of {', '.join(sorted(available))}."
        )
    return metric, higher_is_better(metric)


@dataclass
class Scored:
    """A sweep's jobs scored as `dlexp report` scores them."""

    rows: list[dict[str, Any]]  # best first; unfinished and failed jobs last
    keys: list[str]  # the swept keys
    metric: str  # the column sorted by ("val/acc", or "val/acc last 5")
    higher: bool
    best: dict[str, Any] | None
    settings: list[dict] | None  # repeated runs per setting (aggregate), if any


def score(sweep: str | Path, metric: str | None = None, last: int | None = None) -> Scored:
    """Every job of a sweep, sorted by `metric` (default: the sweep's `report` config, else its
    objective); `last`: each job's mean of the metric over its last k epochs (the course's
    habit), read from its TensorBoard history."""
    sweep = Path(sweep)
    rows = collect(sweep)
    stated = _stated(rows)
    metric = metric or stated.get("metric")
    last = int(last or stated.get("last") or 1)
    if last < 1:
        raise DlexpError(f"last={last}: give the number of final epochs to average, 1 or more.")
    metric, higher = pick_metric(rows, metric)
    if last > 1:
        metric = _mean_of_last(rows, metric, last)
    keys = swept_keys(rows)
    done = [r for r in rows if isinstance(r.get(metric), int | float) and math.isfinite(r[metric])]
    best = max(done, key=lambda r: r[metric] if higher else -r[metric]) if done else None
    rows.sort(
        key=lambda r: (r not in done, -(r.get(metric) or 0) if higher else r.get(metric) or 0)
    )
    return Scored(rows, keys, metric, higher, best, aggregate(done, keys, metric))


def report(
    sweep: str | Path, metric: str | None = None, plot: bool = True, last: int | None = None
) -> list[dict[str, Any]]:
    """Print the table (as wide as the terminal); write summary.csv (every metric), the
    settings' means and a t-test where runs repeat, and summary.png into the sweep folder."""
    sweep = Path(sweep)
    scored = score(sweep, metric, last)
    rows, keys, metric, settings = scored.rows, scored.keys, scored.metric, scored.settings
    _print_table(sweep, scored)
    _write_csv(sweep / "summary.csv", rows, keys)
    if settings is not None:
        _print_settings(settings, metric, scored.higher)
        _write_settings_csv(sweep / "summary_by_setting.csv", settings, metric)
        if len(settings) == 2 and min(s["n"] for s in settings) >= 2:
            _t_test(sweep, settings, metric)
    done = [r for r in rows if isinstance(r.get(metric), int | float) and math.isfinite(r[metric])]
    if plot and keys and done:
        _plot(sweep / "summary.png", done, keys, metric, settings)
    return rows


def _stated(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The `report` settings the sweep's config states (its first job's), if any."""
    for row in rows:
        config = row["folder"] / ".hydra" / "config.yaml"
        if config.is_file():
            stated = (yaml.safe_load(config.read_text()) or {}).get("report") or {}
            return stated if isinstance(stated, dict) else {}
    return {}


def _mean_of_last(rows: list[dict[str, Any]], metric: str, k: int) -> str:
    """Add each finished job's mean of `metric` over its last k recorded epochs, as a new
    column; its name. A metric recorded once (a test split scored at the end only) has no
    epochs to average: the error says how to record it every epoch."""
    column = f"{metric} last {k}"
    for row in rows:
        if row.get(metric) is None:
            continue
        values = recorded(row["folder"], metric)
        if len(values) < min(k, 2):
            raise DlexpError(
                f"last={k}: job {row['job']} recorded {metric} in {len(values)} epoch(s), so "
                "there are no last epochs to average. Score a split recorded every epoch (train/ "
                "or val/), or train with trainer.test_every_epoch=true for test/."
            )
        tail = values[-k:]
        row[column] = sum(tail) / len(tail)
    return column


def recorded(run_dir: str | Path, metric: str) -> list[float]:
    """A run's values of `metric`, one per recorded epoch (its TensorBoard history)."""
    from dlexp.record import read_history

    return [h[metric] for h in read_history(run_dir) if metric in h]


def _t_test(sweep: Path, settings: list[dict], metric: str) -> None:
    """Two settings with repeated runs: Student's t-test of their values (scipy's ttest_ind, as
    the course's DUDL_data_featureAugmentation), printed and written to ttest.json."""
    from scipy import stats

    a, b = settings
    with warnings.catch_warnings():  # (values alike to many digits: scipy warns, p is still given)
        warnings.simplefilter("ignore", RuntimeWarning)
        t, p = stats.ttest_ind(a["values"], b["values"])
    name = lambda s: ", ".join(f"{k}={v}" for k, v in s["overrides"].items())  # noqa: E731
    print(
        f"t-test of {metric}: {name(a)} (mean {a['mean']:.4f}, n={a['n']}) vs {name(b)} "
        f"(mean {b['mean']:.4f}, n={b['n']}): t={t:.2f}, p={p:.3g}"
    )
    result = {"metric": metric, "t": float(t), "p": float(p), "settings": settings}
    (sweep / "ttest.json").write_text(json.dumps(result, indent=1))


def aggregate(rows: list[dict[str, Any]], keys: list[str], metric: str) -> list[dict] | None:
    """Repeated runs of a setting (a swept `seed` or `data.fold`, or jobs with the same
    overrides): per setting of the other swept keys, n, the values and their mean and standard
    deviation, as the course averages its repetitions. None when no setting was run more than
    once."""
    setting_keys = [k for k in keys if k not in REPEATS]
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault(tuple(str(r["overrides"].get(k)) for k in setting_keys), []).append(
            r[metric]
        )
    if all(len(v) == 1 for v in groups.values()):
        return None
    settings = []
    for key, values in groups.items():
        n = len(values)
        mean = sum(values) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        settings.append(
            {
                "overrides": dict(zip(setting_keys, key, strict=True)),
                "n": n,
                "mean": mean,
                "sd": sd,
                "values": values,
            }
        )
    return settings


def _print_settings(settings: list[dict], metric: str, higher: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    keys = list(settings[0]["overrides"])
    ordered = sorted(settings, key=lambda s: -s["mean"] if higher else s["mean"])
    table = Table(title=f"{metric}: mean and standard deviation over repeated runs (n)")
    for key in keys:
        table.add_column(key, overflow="fold")
    for name in (f"mean {metric}", "sd", "n"):
        table.add_column(name, justify="right", no_wrap=True)
    for s in ordered[:SHOWN_ROWS]:
        cells = [escape(str(s["overrides"][k])) for k in keys]
        table.add_row(*cells, f"{s['mean']:.4f}", f"{s['sd']:.4f}", str(s["n"]))
    Console().print(table)


def _write_settings_csv(path: Path, settings: list[dict], metric: str) -> None:
    keys = list(settings[0]["overrides"])
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*keys, "n", f"mean {metric}", f"sd {metric}"])
        for s in settings:
            writer.writerow([*(s["overrides"][k] for k in keys), s["n"], s["mean"], s["sd"]])


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    order = ["train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"]
    present = {k for r in rows for k in r}
    extra = sorted(k for k in present if k.startswith(SCORES) and k not in order)
    return [k for k in order if k in present] + extra


SHOWN_ROWS = 40
REPEATS = ("seed", "data.fold")  # swept keys that repeat a setting rather than change it


def _shown_metrics(rows: list[dict[str, Any]], metric: str, room: int) -> list[str]:
    """The metric columns that fit in `room` characters: the sorting metric and the test split's
    headline first, then the other splits' overall numbers (per-class ones, averages over
    classes and the rest are in summary.csv); shown in train, val, test order."""
    present = _columns(rows)
    overall = [m for m in present if m.count("/") == 1 and not m.endswith(("_macro", "_weighted"))]
    name = metric.split(" ")[0].partition("/")[2]  # "val/acc last 5" -> "acc"
    headline = [m for m in (f"test/{name}", "test/acc", "test/loss") if m in present]
    shown = []
    for m in dict.fromkeys([metric, *headline, *overall]):
        width = max(len(m), 6) + 3  # a right-aligned "0.1234" and the column's padding and rule
        if width <= room or m == metric:
            shown.append(m)
            room -= width
    return [metric] + [m for m in present if m in shown and m != metric]


def _print_table(sweep: Path, scored: Scored) -> None:
    """One row per job, no wider than the terminal: the swept keys and their values in full,
    the sorting metric, the test split's, then what else fits."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    rows, keys, metric, best = scored.rows, scored.keys, scored.metric, scored.best
    console = Console()
    shown = rows[:SHOWN_ROWS]  # a 2,000-job sweep's table would take seconds and a long scroll
    more = f"; {len(shown)} of {len(rows)} jobs" if len(rows) > len(shown) else ""
    table = Table(
        title=f"{sweep}\n(sorted by {metric or 'job'}; * = best{more}; every metric in summary.csv)"
    )
    value = lambda r, k: str(r["overrides"].get(k, ""))  # noqa: E731
    fixed = [("", 1), ("job", max(3, *(len(r["job"].split("_", 1)[0]) for r in shown)))]
    fixed += [(k, max(len(k), *(len(value(r, k)) for r in shown))) for k in keys]
    fixed += [("status", max(6, *(len(r["status"]) for r in shown))), ("time s", 7)]
    room = console.width - 1 - sum(width + 3 for _, width in fixed)
    metrics = _shown_metrics(rows, metric, room) if metric else []
    table.add_column("", no_wrap=True)
    table.add_column("job", no_wrap=True)
    for key in keys:  # folded, never cut, when the keys alone are wider than the terminal
        table.add_column(key, overflow="fold")
    for m in metrics:
        table.add_column(m, justify="right", no_wrap=True, min_width=6)
    table.add_column("status", overflow="fold")
    table.add_column("time s", justify="right", no_wrap=True)
    for r in shown:
        cells = ["*" if r is best else "", r["job"].split("_", 1)[0]]
        cells += [escape(value(r, k)) for k in keys]  # "[radius]": text, not rich markup
        cells += [f"{r[m]:.4f}" if isinstance(r.get(m), int | float) else "" for m in metrics]
        cells += [r["status"], f"{r['time_s']:.1f}" if r.get("time_s") else ""]
        table.add_row(*cells, style="bold green" if r is best else None)
    console.print(table)


def _write_csv(path: Path, rows, keys) -> None:
    metrics = _columns(rows)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["job", *keys, *metrics, "status", "time_s", "folder", "reason"])
        for r in rows:
            writer.writerow(
                [
                    r["job"],
                    *(r["overrides"].get(k, "") for k in keys),
                    *(r.get(m, "") for m in metrics),
                    r["status"],
                    r.get("time_s", ""),
                    r["folder"],
                    r.get("reason", ""),
                ]
            )


def _by_value(values: list[Any]) -> list[Any]:
    """Values in their order as numbers (0.001 before 0.01) when they all are, else as text."""
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    return sorted(values, key=lambda v: v if numeric else str(v))


def plot_series(
    rows: list[dict[str, Any]], keys: list[str], metric: str, settings: list[dict] | None = None
) -> tuple[str, str | None, bool, list[tuple[str, list[tuple[Any, float, float]]]]]:
    """What summary.png draws: the x key (the first swept key), the line key (the second, if
    any), whether x is numeric, and one series per value of the line key, ordered by value, of
    (x, mean, sd) points ordered by x."""
    if settings is not None and settings[0]["overrides"]:  # one point per setting
        keys = list(settings[0]["overrides"])
        rows = [{"overrides": s["overrides"], metric: s["mean"], "sd": s["sd"]} for s in settings]
    x_key, line_key = keys[0], keys[1] if len(keys) > 1 else None
    groups: dict[Any, list[tuple[Any, float, float]]] = {}

    def point(r: dict, key: str) -> Any:  # a number where it is one; lists ([0.9, 0.99]) as text
        value = override_value(r["overrides"].get(key, ""))
        return value if isinstance(value, int | float | str | None) else str(value)

    for r in rows:
        line = point(r, line_key) if line_key else None
        x = point(r, x_key)
        groups.setdefault(line, []).append((x, r[metric], r.get("sd", 0.0)))
    xs = [x for points in groups.values() for x, *_ in points]
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
    series = []
    for line in _by_value(list(groups)):
        order = _by_value([x for x, *_ in groups[line]])
        points = sorted(groups[line], key=lambda p: order.index(p[0]))
        series.append((f"{line_key}={line}" if line_key else metric, points))
    return x_key, line_key, numeric, series


def _plot(path: Path, rows, keys, metric: str, settings: list[dict] | None = None) -> None:
    """The metric against the first swept key, one line per value of the second (the course's
    plots); repeated runs as their mean with a standard-deviation bar. Categories (sgd, adam,
    ...) are spread a little apart per line so that equal scores do not hide each other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key, line_key, numeric, series = plot_series(rows, keys, metric, settings)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    categories = _by_value(list(dict.fromkeys(x for _, points in series for x, *_ in points)))
    markers = "osD^v<>ph*"
    for i, (label, points) in enumerate(series):
        if numeric:
            xs: list[Any] = [p[0] for p in points]
        else:  # category positions, each line shifted by its own small offset
            shift = (i - (len(series) - 1) / 2) * min(0.6 / len(series), 0.15)
            xs = [categories.index(p[0]) + shift for p in points]
        ax.errorbar(
            xs,
            [p[1] for p in points],
            yerr=[p[2] for p in points] if any(p[2] for p in points) else None,
            fmt=markers[i % len(markers)] + ("-" if numeric else ""),
            capsize=3,
            alpha=0.8,
            label=label,
        )
    if not numeric:
        ax.set_xticks(range(len(categories)), [str(c) for c in categories])
    xs_all = [x for _, points in series for x, *_ in points]
    if numeric and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 100:
        ax.set_xscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric)
    counts = "/".join(str(n) for n in sorted({s["n"] for s in settings or []}))
    repeats = f" (mean ± sd of {counts} runs)" if settings else ""
    ax.set_title(f"{metric} by {x_key}" + (f" and {line_key}" if line_key else "") + repeats)
    ax.grid(alpha=0.3)
    if line_key:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


class SweepSummary(Callback):
    """Hydra callback: when a multirun ends, write its summary.csv, plot and HParams record
    into the sweep folder, and note how many jobs failed (`dlexp train -m` exits non-zero if any did)."""

    failed: tuple[int, int] = (0, 0)
    folder: Path | None = None  # the last sweep's (dlexp.sweep returns it)

    def on_multirun_end(self, config, **kwargs) -> None:
        SweepSummary.folder = Path(config.hydra.sweep.dir)
        try:
            stated = config.get("report") or {}
            metric = stated.get("metric") or config.get("objective") or None
            rows = report(Path(config.hydra.sweep.dir), metric, last=stated.get("last"))
        except DlexpError as err:
            print(f"dlexp: no sweep summary: {err}")
            return
        SweepSummary.failed = (sum(r["status"] == "failed" for r in rows), len(rows))
        from dlexp.record import write_experiment

        write_experiment(SweepSummary.folder, rows)
