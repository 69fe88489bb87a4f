"""train(cfg): every model on every data set it fits, TensorBoard, checkpoints, reproducibility."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from conftest import cli, make_cfg, read_hparams, read_scalars, read_tags
from dlexp.checkpoint import load_checkpoint
from dlexp.data import load_data
from dlexp.errors import DlexpError
from dlexp.models import build_model
from dlexp.record import read_history
from dlexp.run import train

IMAGE_DATA = ["mnist", "fashion_mnist", "emnist", "cifar10", "stl10"]
PAIRS = [("ann", d) for d in ["iris", "qwerties", "regression", *IMAGE_DATA]] + [
    ("cnn", d) for d in IMAGE_DATA
]


@pytest.mark.parametrize(("model", "data"), PAIRS)
def test_every_model_fits_every_data_set(model, data, env, tmp_path):
    cfg = make_cfg(f"model={model}", f"data={data}", "trainer.epochs=1")
    run = tmp_path / "run"
    metrics = train(cfg, run_dir=run)

    monitor = "loss" if data == "regression" else "acc"
    assert metrics["status"] == "completed" and metrics["epochs"] == 1
    for split in ("train", "val", "test"):
        assert f"{split}/loss" in metrics and f"{split}/{monitor}" in metrics
    assert json.loads((run / "metrics.json").read_text())["test/loss"] == pytest.approx(
        metrics["test/loss"]
    )
    scalars = read_scalars(run)
    for tag in ("train/loss", "val/loss", "test/loss", "lr", f"val/{monitor}"):
        assert tag in scalars, tag
    assert scalars["test/loss"][0][1] == pytest.approx(metrics["test/loss"], rel=1e-5)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["loop"]["epoch"] == 1 and (run / "checkpoints" / "best.pt").is_file()


def test_cnn_learns_generated_mnist_and_logs_confusion_matrix(env, tmp_path):
    metrics = train(make_cfg("model=cnn", "data=mnist", "trainer.epochs=3"), run_dir=tmp_path)
    assert metrics["test/acc"] > 0.5  # chance is 0.1
    assert "test/confusion_matrix" in read_tags(tmp_path)["images"]
    assert Image.open(tmp_path / "confusion_matrix.png").size == (700, 700)  # 10 classes
    hparams, metric_tags = read_hparams(tmp_path)
    assert hparams["optimizer.lr"] == pytest.approx(0.001) and hparams["trainer.epochs"] == 3
    assert "test/acc" in metric_tags and "val/loss" in metric_tags


def test_confusion_matrix_has_axis_titles_and_whole_class_names():
    from dlexp.tasks.classification import confusion_figure

    names = ["T-shirt/top", "Trouser", "Ankle boot"]
    ax = confusion_figure(torch.tensor([[5, 1, 0], [0, 6, 0], [2, 0, 4]]), names).axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert sorted(t.get_text() for t in ax.texts) == sorted(
        ["5", "1", "0", "0", "6", "0", "2", "0", "4"]
    )


def test_iris_default_reaches_95_percent(env, tmp_path):
    metrics = train(make_cfg(), run_dir=tmp_path)
    assert metrics["test/acc"] >= 0.95


def test_binary_qwerties_uses_one_logit(env, tmp_path):
    train(make_cfg("data=qwerties", "trainer.epochs=3"), run_dir=tmp_path)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    last_bias = [v for k, v in state["model"].items() if k.endswith("bias")][-1]
    assert last_bias.shape == (1,)


def test_regression_reports_correlation(env, tmp_path):
    metrics = train(make_cfg("data=regression", "trainer.epochs=20"), run_dir=tmp_path)
    assert metrics["test/corr"] > 0.8


def test_same_seed_same_numbers_other_seed_differs(env, tmp_path):
    a = train(make_cfg("model=cnn", "data=mnist", "trainer.epochs=1"), run_dir=tmp_path / "a")
    b = train(make_cfg("model=cnn", "data=mnist", "trainer.epochs=1"), run_dir=tmp_path / "b")
    c = train(
        make_cfg("model=cnn", "data=mnist", "trainer.epochs=1", "seed=7"), run_dir=tmp_path / "c"
    )
    for key in ("train/loss", "val/loss", "test/loss", "test/acc"):
        assert a[key] == b[key]
    assert a["train/loss"] != c["train/loss"]
    wa = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.9", "optimizer.nesterov=true"],
        ["optimizer=adamw"],
        ["optimizer=rmsprop"],
        ["scheduler=step"],
        ["scheduler=exponential"],
        ["scheduler=cosine"],
        ["scheduler=onecycle"],
        ["loss=cross_entropy", "loss.label_smoothing=0.1"],
        [
            "model.activation=tanh",
            "model.batch_norm=true",
            "model.dropout=0.2",
            "model.init=xavier",
        ],
        ["model.init=kaiming", "model.activation=leaky_relu"],
        ["trainer.grad_clip=1.0", "trainer.l1=0.001"],
    ],
)
def test_optimizers_schedulers_losses_and_model_options(overrides, env, tmp_path):
    metrics = train(make_cfg("trainer.epochs=5", *overrides), run_dir=tmp_path)
    history = read_history(tmp_path)
    losses = [h["train/loss"] for h in history]
    assert losses[-1] < losses[0]  # it learns ...
    assert metrics["test/acc"] >= 0.6  # ... well above chance (1/3) on 3-class Iris
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    group = state["optimizers"]["optimizer"]["param_groups"][0]
    for override in overrides:  # ... and what was asked for is what ran
        key, _, value = override.partition("=")
        if key in ("optimizer.momentum", "optimizer.nesterov"):
            assert str(group[key.split(".")[1]]).lower() == value
    if any(o.startswith("scheduler=") for o in overrides):
        assert len({h["lr"] for h in history}) > 1


def test_schedulers_change_the_learning_rate(env, tmp_path):
    train(make_cfg("trainer.epochs=3", "scheduler=step", "scheduler.gamma=0.5"), run_dir=tmp_path)
    lrs = [v for _, v in read_scalars(tmp_path)["lr"]]
    assert lrs == pytest.approx([1e-3, 5e-4, 2.5e-4])


@pytest.mark.parametrize("loss", ["mse", "l1", "mse_plus_mean", "correlation"])
def test_regression_losses(loss, env, tmp_path):
    metrics = train(
        make_cfg("data=regression", f"loss={loss}", "trainer.epochs=5"), run_dir=tmp_path
    )
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))


def test_bce_loss_choice_on_binary_data(env, tmp_path):
    metrics = train(make_cfg("data=qwerties", "loss=bce_with_logits", "trainer.epochs=3"), tmp_path)
    assert metrics["test/acc"] > 0.8


def test_early_stopping_stops(env, tmp_path):
    cfg = make_cfg("trainer.epochs=50", "trainer.early_stopping.patience=2", "optimizer.lr=1e-7")
    metrics = train(cfg, run_dir=tmp_path)
    assert metrics["epochs"] < 50


def test_cnn_emnist_preset_and_custom_blocks(env, tmp_path):
    cfg = make_cfg("model=cnn_emnist", "data=emnist", "trainer.epochs=1")
    train(cfg, run_dir=tmp_path / "a")
    state = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    assert state["features.0.0.weight"].shape == (6, 1, 3, 3)
    assert "features.0.2.running_mean" in state  # batch norm after the pool
    linear = [k for k, v in state.items() if k.startswith("head") and v.dim() == 2]
    assert state[linear[-1]].shape == (26, 50)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=cnn"], "model=cnn needs images"),
        (["optimizer.lr=-1"], "optimizer.lr=-1"),
        (["trainer.epochs=0"], "trainer.epochs=0"),
        (["data.batch_size=0"], "data.batch_size=0"),
        (["data.val_fraction=1.5"], "data.val_fraction=1.5"),
        (["model.activation=swish"], "model.activation='swish'"),
    ],
)
def test_bad_values_are_refused_before_work(overrides, expected, env, tmp_path):
    with pytest.raises(Exception) as err:
        train(make_cfg(*overrides), run_dir=tmp_path)
    from dlexp.errors import user_error

    assert isinstance(user_error(err.value), DlexpError)
    assert expected in str(user_error(err.value))
    assert not (tmp_path / "metrics.json").exists()


def test_per_class_metrics_in_metrics_json_eval_and_pr_curves(env, tmp_path, capsys):
    metrics = train(make_cfg("model=cnn", "data=mnist", "trainer.epochs=2"), run_dir=tmp_path)
    names = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["meta"]["class_names"]
    recalls = [metrics[f"test/recall/{n}"] for n in names]
    f1s = [metrics[f"test/f1/{n}"] for n in names]
    assert metrics["test/recall_macro"] == pytest.approx(sum(recalls) / len(recalls))
    assert metrics["test/f1_macro"] == pytest.approx(sum(f1s) / len(f1s))
    # weighted recall is accuracy, by definition: a check on the counts behind them
    assert metrics["test/recall_weighted"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test/precision/" + names[3]] == metrics["test/precision/" + names[3]]
    tags = read_tags(tmp_path)["tensors"]
    assert {f"test/pr_curve/{n}" for n in names} <= set(tags)  # a PR curve per class
    capsys.readouterr()
    code, out, _ = cli(capsys, "eval", f"run={tmp_path}")  # the per-class table
    assert code == 0 and "class                precision    recall        f1" in out
    row = next(line for line in out.splitlines() if line.startswith(f"{names[0]:<20} "))
    assert row.split()[-1] == f"{metrics['test/f1/' + names[0]]:.4f}"


def test_binary_classification_reports_roc_auc(env, tmp_path):
    metrics = train(make_cfg("data=qwerties", "trainer.epochs=5"), run_dir=tmp_path)
    assert 0.5 < metrics["test/roc_auc"] <= 1.0
    assert set(k for k in metrics if k.startswith("test/f1/")) == {"test/f1/blob0", "test/f1/blob1"}


def test_a_linear_activation_makes_the_mlp_an_affine_map(env, tmp_path):
    from dlexp.build import load_run

    train(make_cfg("model.activation=linear", "trainer.epochs=1"), run_dir=tmp_path)
    model = load_run(tmp_path).model.eval()
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    zero = model(torch.zeros(5, 4))
    with torch.no_grad():  # f(a + b) - f(0) == (f(a) - f(0)) + (f(b) - f(0))
        torch.testing.assert_close(model(a + b) - zero, model(a) - zero + model(b) - zero)
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())


def test_the_course_cnns_normalise_after_the_convs_only(env):
    from dlexp.build import build

    model = build(make_cfg("model=cnn_emnist", "data=emnist"), torch.device("cpu"))[2]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.features.modules()) == 2
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.head.modules())
    cfg = make_cfg("model=cnn_emnist", "data=emnist", "model.head_batch_norm=true")
    head = build(cfg, torch.device("cpu"))[2].head
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules())


@pytest.mark.parametrize("init", ["normal", "xavier", "kaiming"])
def test_inits_draw_what_the_course_draws(init, env):
    """normal: weights and biases ~ N(0, std^2); xavier/kaiming: weights, biases as PyTorch's."""
    cfg = make_cfg("experiment=init_xavier_kaiming", f"model.init={init}", "model.init_std=0.5")
    data = load_data(cfg.data, cfg.seed)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.meta, 1)
    torch.manual_seed(0)
    plain = build_model(make_cfg("experiment=init_xavier_kaiming").model, data.meta, 1)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    biases = torch.cat([m.bias for m in linears]).detach()
    weights = torch.cat([m.weight.flatten() for m in linears]).detach()
    if init == "normal":
        assert abs(biases.std().item() - 0.5) < 0.15 and abs(weights.std().item() - 0.5) < 0.05
    else:
        default = [m.bias for m in plain.modules() if isinstance(m, torch.nn.Linear)]
        assert torch.equal(biases, torch.cat(default).detach())  # PyTorch's draw, untouched
        drawn = torch.cat(
            [m.weight.flatten() for m in plain.modules() if isinstance(m, torch.nn.Linear)]
        )
        assert not torch.equal(weights, drawn.detach())  # the weights were redrawn
