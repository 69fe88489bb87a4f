"""`dlexp report`: a table that fits the terminal, every metric in the CSV, a readable plot."""

from __future__ import annotations

import csv

import pytest
from test_sweeps import only_sweep

from conftest import cli
from dlexp.cli import main
from dlexp.report import plot_series, score


@pytest.fixture
def ten_class_sweep(env):  # (one sweep, read at three widths)
    """Two jobs on 10-class data: 30 per-class metrics each, and a long swept value."""
    main(
        [
            "train",
            "-m",
            "data=mnist",
            "optimizer.lr=0.0295926354,0.001",
            "trainer.epochs=1",
            "trainer.progress=none",
        ]
    )
    return only_sweep(env)


def test_the_table_fits_the_terminal(ten_class_sweep, capsys, monkeypatch):
    for columns in (100, 160):
        monkeypatch.setenv("COLUMNS", str(columns))
        code, out, err = cli(capsys, "report", str(ten_class_sweep))
        assert code == 0, err
        lines = out.splitlines()
        assert max(len(line) for line in lines) <= columns
        header = next(line for line in lines if "optimizer.lr" in line)
        assert "…" not in out  # nothing cut: swept keys and values in full
        assert "0.0295926354" in out and "0.001" in out
        assert "val/acc" in header and "test/acc" in header  # the objective and the test split
        assert "test/precision" not in header  # per-class numbers: in the CSV
        if columns == 160:  # room for more: the training and validation numbers too
            assert "train/loss" in header and "val/loss" in header
    rows = list(csv.DictReader((ten_class_sweep / "summary.csv").open()))
    assert len(rows) == 2 and sum(k.startswith("test/f1/") for k in rows[0]) == 10
    monkeypatch.setenv("COLUMNS", "40")  # narrower than the keys: they fold rather than widen
    code, out, _ = cli(capsys, "report", str(ten_class_sweep))
    assert code == 0 and max(len(line) for line in out.splitlines()) <= 40


def test_a_glob_sweep_plots_categories_apart_and_orders_its_legend(env, capsys):
    main(
        [
            "train",
            "-m",
            "optimizer=glob(*,exclude=[adamw,lbfgs,rmsprop])",
            "optimizer.lr=0.01,0.001",
            "trainer.epochs=1",
            "trainer.progress=none",
        ]
    )
    sweep = only_sweep(env)
    scored = score(sweep)
    x_key, line_key, numeric, series = plot_series(scored.rows, scored.keys, scored.metric)
    assert (x_key, line_key, numeric) == ("optimizer", "optimizer.lr", False)
    # the legend by value (0.001 before 0.01, not as text), the categories in order
    assert [label for label, _ in series] == [
        "optimizer.lr=0.001",
        "optimizer.lr=0.01",
    ]
    assert all([p[0] for p in points] == ["adam", "sgd"] for _, points in series)
    assert (sweep / "summary.png").is_file()


def test_a_numeric_sweep_plots_lines_in_value_order(tmp_path):
    rows = [
        {"overrides": {"optimizer.lr": lr, "data.batch_size": bs}, "val/acc": acc}
        for lr, bs, acc in [
            ("0.1", "64", 0.5),
            ("0.01", "8", 0.7),
            ("0.001", "64", 0.6),
            ("0.01", "64", 0.8),
        ]
    ]
    _, _, numeric, series = plot_series(rows, ["optimizer.lr", "data.batch_size"], "val/acc")
    assert numeric
    assert [label for label, _ in series] == ["data.batch_size=8", "data.batch_size=64"]
    assert [p[0] for p in series[1][1]] == [0.001, 0.01, 0.1]
