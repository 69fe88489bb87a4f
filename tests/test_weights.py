"""Weights set to constants by name (DUDL_weights_demoinits) and layers frozen for the first
epochs only (DUDL_weights_freezeWeights), through train(cfg) and the CLI."""

from __future__ import annotations

import torch

from conftest import cli, make_cfg
from dlexp.build import build, seed_everything
from dlexp.run import train

SGD = ["optimizer=sgd", "optimizer.lr=0.1", "model.hidden=[8,8]"]


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def _initial(*overrides: str) -> dict[str, torch.Tensor]:
    cfg = make_cfg(*overrides)
    seed_everything(cfg.seed)
    return {k: v.clone() for k, v in build(cfg, torch.device("cpu"))[2].state_dict().items()}


def test_constant_sets_the_named_parameters(env):
    start = _initial(*SGD, "model.constant={body.3.weight:0,head.bias:2.5}")
    plain = _initial(*SGD)
    assert torch.equal(start["body.3.weight"], torch.zeros(8, 8))
    assert torch.equal(start["head.bias"], torch.full((3,), 2.5))
    assert torch.equal(start["body.1.weight"], plain["body.1.weight"])  # the rest as drawn


def test_all_zero_weights_never_learn_past_the_output_bias(env, tmp_path):
    """The notebook's all-zeros net: every ReLU unit is dead, so only the output bias moves."""
    train(make_cfg(*SGD, "model.constant={*:0}", "trainer.epochs=2"), run_dir=tmp_path)
    w = _weights(tmp_path)
    for name in ("body.1.weight", "body.1.bias", "body.3.weight", "body.3.bias", "head.weight"):
        assert not w[name].any(), name
    assert w["head.bias"].any()


def test_layers_frozen_for_the_first_epochs_then_released(env, tmp_path):
    frozen = [*SGD, "model.trainable=[head.*]", "model.freeze_epochs=1"]
    start = _initial(*frozen)
    train(make_cfg(*frozen, "trainer.epochs=1"), run_dir=tmp_path / "one")
    one = _weights(tmp_path / "one")
    assert torch.equal(one["body.1.weight"], start["body.1.weight"])  # epoch 1: frozen
    assert not torch.equal(one["head.weight"], start["head.weight"])
    train(make_cfg(*frozen, "trainer.epochs=3"), run_dir=tmp_path / "three")
    three = _weights(tmp_path / "three")
    assert not torch.equal(three["body.1.weight"], start["body.1.weight"])  # released
    # A run resumed after its frozen epoch releases them just the same.
    train(make_cfg(*frozen, "trainer.epochs=3", f"trainer.resume={tmp_path / 'one'}"))
    resumed = _weights(tmp_path / "one")
    for name, value in three.items():
        assert torch.equal(resumed[name], value), name


def test_weight_keys_refuse_what_cannot_apply(env, capsys):
    code, _, err = cli(capsys, "train", "model.constant={body.9.weight:0}", "trainer.epochs=1")
    assert code == 2 and "model.constant pattern 'body.9.weight' matches no parameter" in err
    assert "body.1.weight" in err
    code, _, err = cli(capsys, "train", "model.freeze_epochs=3", "trainer.epochs=1")
    assert code == 2 and "model.freeze_epochs=3" in err and "model.trainable=[head.*]" in err
    code, _, err = cli(capsys, "train", "model.trainable=[head.*]", "model.freeze_epochs=0.5")
    assert code == 2 and "model.freeze_epochs=0.5 is not valid" in err
