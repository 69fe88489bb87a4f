"""Closed-form MLP gradients (dlexp.closed_form) against autograd's."""

from __future__ import annotations

import functools
import logging

import pytest
import torch

from conftest import make_cfg
from dlexp import closed_form
from dlexp.checkpoint import load_checkpoint
from dlexp.models.layers import ACTIVATIONS
from dlexp.models.mlp import MLP
from dlexp.train import build, build_optimizer, train

CPU = torch.device("cpu")


@functools.cache
def data_and_task(name: str):
    data, task, _ = build(make_cfg(f"data={name}"), CPU)
    return data, task


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("name", ["qwerties", "iris", "regression"])  # BCE, cross-entropy, MSE
def test_gradients_equal_autograds(env, name, activation):
    data, task = data_and_task(name)
    torch.manual_seed(0)
    model = MLP(data.meta.input_shape, task.num_outputs, [8, 5], activation)
    x, y = data.train.x, data.train.y
    out = model(x)
    loss = task.loss(out, y)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    cf_out, cf_loss = closed_form.ClosedFormMLP(model, task).gradients(x, y)
    assert torch.equal(cf_out, out.detach())  # the same ops forward
    torch.testing.assert_close(cf_loss, loss.detach(), rtol=1e-6, atol=0)
    assert len(grads) == 6
    for p, want in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-7)


def test_a_run_in_closed_form_matches_one_through_autograd(env, tmp_path, caplog):
    """Iris, Adam, L1 and gradient clipping, 16-sample batches: the whole run, both ways."""
    args = ("data=iris", "optimizer=adam", "trainer.l1=0.01", "trainer.grad_clip=0.5")
    runs = {}
    for way in ("true", "false"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="dlexp"):
            cfg = make_cfg(*args, "trainer.epochs=4", f"trainer.closed_form={way}")
            runs[way] = train(cfg, tmp_path / way)
        assert ("gradients in closed form" in caplog.text) == (way == "true")
    fast, slow = runs["true"], runs["false"]
    assert fast["steps"] == slow["steps"] == 4 * 14  # 108 samples in batches of 8
    for a, b in zip(fast["history"], slow["history"], strict=True):
        for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    weights = [load_checkpoint(tmp_path / w / "checkpoints" / "last.pt")["model"] for w in runs]
    for name, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][name], rtol=1e-5, atol=1e-6)
    # A closed-form checkpoint resumes through autograd and goes on as an autograd run does.
    more = {
        way: train(
            make_cfg(
                *args,
                "trainer.epochs=5",
                "trainer.closed_form=false",
                f"trainer.resume={tmp_path / way}",
            )
        )
        for way in runs
    }
    assert [row["epoch"] for row in more["true"]["history"]] == [1, 2, 3, 4, 5]
    for key in ("train/loss", "val/loss", "test/loss"):
        assert more["true"][key] == pytest.approx(more["false"][key], rel=1e-5), key


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (("model=cnn", "data=mnist"), "the model is CNN, not the MLP"),
        (("model.dropout=0.5",), "it has Dropout layers"),
        (("model.batch_norm=true",), "it has BatchNorm1d layers"),
        (("loss=l1",), "loss has no closed-form gradient"),
        (("optimizer=lbfgs",), "re-evaluates the loss (L-BFGS)"),
    ],
)
def test_what_needs_autograd_says_why(env, overrides, reason):
    cfg = make_cfg("data=regression", *overrides)
    _, task, model = build(cfg, CPU)
    groups = task.parameter_groups(model)
    optimizers = {k: build_optimizer(cfg[k], params, CPU) for k, params in groups.items()}
    assert reason in closed_form.why_not(model, task, optimizers, compiled=False)
