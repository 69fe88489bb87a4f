"""Sequences (the course's RNN section): windows in time order, rnn/lstm/gru on a series and on
a text, generation after training and by `dlexp sample`, exact resume, bad input."""

from __future__ import annotations

import json
import signal

import pytest
import torch
import torch.nn.functional as F

from conftest import cli, make_cfg, read_tags
from dlexp.data.load import load_data
from dlexp.data.sequences import LOREM, char_name, char_of
from dlexp.generate import frequency_loss
from dlexp.run import train
from test_faults import signal_at


@pytest.fixture
def small_text(tmp_path) -> list[str]:
    """A short text of 11 characters (the shipped lorem ipsum is 5,809 long)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 40)
    return [
        "data=text",
        f"data.source.path={corpus}",
        "data.source.seq_length=12",
        "model.hidden=16",
        "model.layers=1",
        "data.batch_size=16",
        "trainer.max_steps_per_epoch=6",
    ]


def test_windows_follow_the_series_and_the_test_split_is_its_future():
    data = load_data(make_cfg("data=alternating").data, 0)
    series = data.meta.series
    assert len(series) == 50 and data.meta.input_shape == (9, 1)
    assert len(data.train) + len(data.val) + len(data.test) == 41  # 50 - 9 windows
    assert torch.equal(data.train.x[3, :, 0], series[3:12]) and data.train.y[3, 0] == series[12]
    # the test split is the last 8 windows, in order: the first predicts value 42
    assert len(data.test) == 8 and data.test.y[0, 0] == series[42]
    assert torch.equal(data.test.x[0, :, 0], series[33:42])
    signs = torch.sign(series)
    assert torch.equal(signs[::2], torch.ones(25)) and torch.equal(signs[1::2], -torch.ones(25))

    text = load_data(make_cfg("data=text").data, 0)
    assert text.meta.num_classes == 26 and "space" in text.meta.class_names  # lorem's characters
    assert text.train.x.dtype == torch.long and text.train.x.shape[1] == 80
    chars = "".join(char_of(n) for n in text.meta.class_names)
    decoded = "".join(chars[i] for i in text.train.x[0])
    assert decoded == LOREM.read_text().lower()[:80]  # the notebook's text, lower-cased


def test_a_text_scored_at_every_position_keeps_the_held_out_targets_unseen():
    """data=text's windows are labelled with the window shifted by one (the notebook's
    targets); the 79 windows before each held-out part are dropped, whose targets would be
    that part's."""
    data = load_data(make_cfg("data=text").data, 0)
    series, n = data.meta.series, len(data.train)
    assert data.train.y.shape == (n, 80) and data.meta.num_targets == 80
    assert torch.equal(data.train.y[:, :-1], data.train.x[:, 1:])
    assert torch.equal(data.train.y[-1], series[n : n + 80])  # its last target: n + 79
    assert torch.equal(data.val.x[0], series[n + 79 : n + 159])  # the first val target: n + 80
    assert (n, len(data.val), len(data.test)) == (4490, 508, 573)  # 5,729 windows, 2 x 79 dropped
    assert len(series) - 80 == 5729
    one = load_data(make_cfg("data=text", "data.source.every_step=false").data, 0)
    assert one.train.y.shape == (4640,) and one.meta.num_targets == 1  # 5,729 - 573 - 516


def test_a_character_name_round_trips():
    for c in "a ,.;é\t":
        assert char_of(char_name(c)) == c


def test_the_frequency_baseline_is_torchs_cross_entropy_of_the_frequencies():
    train_y, y = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([2, 1, 0, 0])
    counts = torch.bincount(train_y, minlength=4).double() + 1
    logits = (counts / counts.sum()).log().expand(len(y), 4)
    assert frequency_loss(train_y, y, 4) == pytest.approx(F.cross_entropy(logits, y).item())


@pytest.mark.parametrize("model", ["rnn", "lstm", "gru"])
def test_each_recurrent_net_learns_the_next_value_and_continues_the_series(model, env, tmp_path):
    cfg = make_cfg(
        f"model={model}", "data=sine", "model.hidden=8", "model.layers=2", "data.batch_size=16"
    )
    cfg.trainer.epochs = 2
    cfg.model.bidirectional = model == "gru"  # (its read-out takes both directions' states)
    metrics = train(cfg, tmp_path)
    assert {"test/loss", "test/corr", "test/sign_acc"} <= set(metrics)
    weights = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert weights["out.weight"].shape == (1, 16 if model == "gru" else 8)
    numbers = json.loads((tmp_path / "extrapolation.json").read_text())
    assert set(numbers) == {"test_mse", "last_value_mse", "free_run_mse", "hold_last_mse"}
    assert numbers["test_mse"] == pytest.approx(
        metrics["test/loss"], rel=1e-4
    )  # one loss, two ways
    assert (tmp_path / "extrapolation.png").is_file()
    assert "test/extrapolation" in read_tags(tmp_path)["images"]


def test_an_rnn_predicts_the_sine_better_than_the_last_value(env, tmp_path):
    """The test split is the series' future: the next value, better than repeating the last."""
    args = ["model=rnn", "data=sine", "model.hidden=16", "data.batch_size=16", "trainer.epochs=10"]
    metrics = train(make_cfg(*args), tmp_path)
    numbers = json.loads((tmp_path / "extrapolation.json").read_text())
    assert metrics["test/loss"] < 0.5 * numbers["last_value_mse"]


@pytest.mark.slow  # 30 epochs of one window a step (~20 s)
def test_the_sine_notebook_learns_below_the_last_value(env, tmp_path):
    metrics = train(make_cfg("experiment=rnn_sine"), tmp_path)
    numbers = json.loads((tmp_path / "extrapolation.json").read_text())
    assert metrics["test/loss"] < 0.5 * numbers["last_value_mse"]


@pytest.mark.parametrize(
    ("model", "more"),
    [
        ("rnn", []),
        ("lstm", []),
        ("gru", ["data.source.every_step=false", "model.bidirectional=true"]),  # many-to-one
    ],
)
def test_each_recurrent_net_predicts_the_next_character(model, more, small_text, env, tmp_path):
    metrics = train(make_cfg(f"model={model}", *small_text, *more), tmp_path / "run")
    assert {"test/loss", "test/acc", "test/f1/space"} <= set(metrics)
    run = tmp_path / "run"
    text = (run / "samples.txt").read_text()
    assert "most likely:" in text and "temperature 0.8:" in text
    baseline = json.loads((run / "generation.json").read_text())
    assert 1.5 < baseline["val_frequency_loss"] < 2.4  # below a uniform guess's ln(11)
    assert "test/samples/text_summary" in read_tags(run)["tensors"]  # TensorBoard's text


def test_every_position_is_scored_as_torchs_cross_entropy(small_text, env, tmp_path, capsys):
    """The notebook's loss: nn.CrossEntropyLoss over every position of each window (in
    training and in `dlexp eval`)."""
    from dlexp import load

    metrics = train(make_cfg("model=lstm", *small_text, "trainer.epochs=1"), tmp_path)
    run = load(tmp_path)
    data, model = run.data(), run.model()
    x, y = data.test.x, data.test.y
    with torch.no_grad():
        out = model(x)
    assert out.shape == (len(x), 12, 11) and y.shape == (len(x), 12)
    expected = torch.nn.CrossEntropyLoss()(out.movedim(-1, 1), y)
    assert metrics["test/loss"] == pytest.approx(expected.item(), rel=1e-5)
    accuracy = (out.argmax(-1) == y).double().mean().item()
    assert metrics["test/acc"] == pytest.approx(accuracy, rel=1e-6)
    recall = ((out.argmax(-1) == y) & (y == 10)).sum() / (y == 10).sum()  # "t": the last class
    assert metrics["test/recall/t"] == pytest.approx(recall.item(), rel=1e-6)
    code, out, err = cli(capsys, "eval", f"run={tmp_path}")
    assert code == 0 and f"test/loss {metrics['test/loss']:.4f}  test/acc" in out, err


def test_sample_continues_a_series_and_writes_text(small_text, env, tmp_path, capsys):
    train(
        make_cfg("model=gru", "data=sine", "trainer.epochs=1", "data.batch_size=32"), tmp_path / "s"
    )
    out = tmp_path / "ext.png"
    code, _, err = cli(capsys, "sample", f"run={tmp_path / 's'}", "n=150", f"out={out}")
    assert code == 0, err
    values = json.loads(out.with_suffix(".json").read_text())
    assert out.is_file() and len(values["free_run"]) == 150

    train(make_cfg("model=lstm", *small_text), tmp_path / "t")
    args = ["sample", f"run={tmp_path / 't'}", "prompt=the c", "n=30", f"out={tmp_path / 'a.txt'}"]
    code, out_text, err = cli(capsys, *args, "temperature=0")
    assert code == 0, err
    greedy = (tmp_path / "a.txt").read_text().rstrip("\n")
    assert greedy.startswith("the c") and len(greedy) == 35 and greedy in out_text
    assert cli(capsys, *args, "temperature=0")[0] == 0  # the most likely: the same again
    assert (tmp_path / "a.txt").read_text().rstrip("\n") == greedy
    code, _, err = cli(capsys, "sample", f"run={tmp_path / 't'}", "prompt=The!")
    assert code == 2 and "['!', 'T']" in err and "not in the training text" in err


def test_a_text_run_resumes_mid_epoch_exactly(small_text, env, tmp_path, capsys):
    """(With two layers, dropout between them and gradient clipping: the RNG and every
    setting's state come back.)"""
    args = [*small_text, "model=lstm", "trainer.epochs=2", "trainer.max_steps_per_epoch=null"]
    args += ["data.batch_size=64", "model.layers=2"]
    args += ["model.dropout=0.2", "trainer.grad_clip=0.5"]
    whole = train(make_cfg(*args), tmp_path / "whole")
    run = tmp_path / "cut"
    with signal_at(5, signal.SIGTERM):  # epoch 1 has 12 steps
        assert cli(capsys, "train", *args, f"hydra.run.dir={run}")[0] == 143
    code, _, err = cli(capsys, "train", f"trainer.resume={run}")
    assert code == 0, err
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["test/loss"] == whole["test/loss"] and resumed["test/acc"] == whole["test/acc"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["model=lstm", "data=iris"], "reads samples of one dimension as characters"),
        (["model=gru", "data=mnist"], "reads sequences"),
        (["data=sine", "data.source.seq_length=600"], "does not fit a sequence of 500"),
        (["model=gru", "data=sine", "model.layers=1", "model.dropout=0.2"], "between recurrent"),
        (["model=rnn", "data=sine", "model.cell=transformer"], "use rnn, lstm or gru"),
        (["data=alternating", "data.source.pattern=+x"], "a pattern of + and -"),
        (["data=text", "data.source.path=/nope.txt"], "no such text file"),  # (checked first)
        (["model=lstm", "data=text", "model.every_step=false"], "set the two alike"),
        (["model=gru", "data=text", "model.bidirectional=true"], "the characters it is to"),
        (["model=rnn", "data=sine", "model.every_step=true"], "set model.every_step=false"),
    ],
)
def test_bad_sequence_settings_get_one_paragraph(args, expected, env, capsys):
    model = [] if any(a.startswith("model=") for a in args) else ["model=rnn"]
    code, _, err = cli(capsys, "train", *model, *args, "trainer.epochs=1")
    assert code == 2 and expected in err and "Traceback" not in err, err


def test_a_batched_sweep_of_recurrent_nets_runs_each_job_alone(env, capsys):
    code, out, err = cli(
        capsys,
        "train",
        "-m",
        "hydra/launcher=batched",
        "model=rnn",
        "data=alternating",
        "optimizer.lr=0.01,0.001",
        "trainer.epochs=2",
    )
    assert code == 0, err
    assert out.count("runs alone: model Recurrent has no stacked form") == 2
    assert out.count("final test/loss") == 2
