"""The course's data manipulations (binarised, scrambled, split-wise normalised MNIST, a class
held out) on generated MNIST files, through load_data and train(cfg)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import cli, make_cfg
from dlexp.data import load_data
from dlexp.run import train


def _prepared(data, split) -> torch.Tensor:
    return torch.cat([x for x, _ in data.batches(split, 4096)])


def test_binarize_makes_every_lit_pixel_one(env):
    plain = load_data(make_cfg("data=mnist").data, seed=0)
    binary = load_data(
        make_cfg("data=mnist", "data.binarize=true", "data.normalize=unit").data, seed=0
    )
    for a, b in ((plain.train, binary.train), (plain.test, binary.test)):
        x = _prepared(binary, b)
        assert set(x.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(x, (a.x > 0).float())


def test_scramble_is_one_permutation_for_every_image_and_split(env):
    plain = load_data(make_cfg("data=mnist").data, seed=0)
    mixed = load_data(make_cfg("data=mnist", "data.scramble=true").data, seed=0)
    a, b = plain.train.x.flatten(1), mixed.train.x.flatten(1)
    assert not torch.equal(a, b)
    # Each scrambled pixel is one original pixel over all training images (random images:
    # every pixel's column of values is unique) ...
    where = [int(torch.nonzero((a == b[:, [j]]).all(0))[0]) for j in range(b.shape[1])]
    assert sorted(where) == list(range(784))
    # ... and the test images are scrambled by that same permutation.
    assert torch.equal(mixed.test.x.flatten(1), plain.test.x.flatten(1)[:, where])
    again = load_data(make_cfg("data=mnist", "data.scramble=true").data, seed=0)
    assert torch.equal(again.test.x, mixed.test.x)  # drawn from the seed


def test_test_split_scaled_its_own_way(env):
    data = load_data(make_cfg("experiment=mnist_normalization", "data.subset=null").data, seed=0)
    train_x, test_x = _prepared(data, data.train), _prepared(data, data.test)
    assert torch.equal(train_x, data.train.x.float())  # raw 0..255
    assert train_x.max() > 200
    assert test_x.max() <= 1.0 and test_x.max() > 0.9
    plain = load_data(make_cfg("data=mnist").data, seed=0)
    assert torch.allclose(test_x, plain.test.x.float() / 255)


def test_normalization_challenge_shows_the_mismatch(env, tmp_path):
    """Raw training pixels and [0, 1] test pixels: the test split is scored as scaled."""
    quick = ["trainer.epochs=1", "data.subset=null"]
    same = train(
        make_cfg("experiment=mnist_normalization", "data.normalize_test=raw", *quick),
        run_dir=tmp_path / "a",
    )
    mixed = train(make_cfg("experiment=mnist_normalization", *quick), run_dir=tmp_path / "b")
    assert same["val/loss"] == mixed["val/loss"]  # one training run ...
    assert same["test/loss"] != mixed["test/loss"]  # ... scored on differently scaled tests


def test_held_out_class_is_only_tested_and_named_in_metrics(env, tmp_path):
    data = load_data(make_cfg("experiment=mnist_missing7").data, seed=0)
    assert 7 not in data.train.y.tolist() and 7 not in data.val.y.tolist()
    assert set(data.test.y.tolist()) == {7} and data.meta.num_classes == 10
    metrics = train(make_cfg("experiment=mnist_missing7", "trainer.epochs=1"), run_dir=tmp_path)
    called = {k: v for k, v in metrics.items() if k.startswith("test/called/")}
    assert len(called) == 10 and sum(called.values()) == pytest.approx(1.0)
    assert metrics["test/acc"] == pytest.approx(called["test/called/7 - seven"])
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["test/called/7 - seven"] == metrics["test/called/7 - seven"]


def test_held_out_must_name_a_class(env, capsys):
    code, _, err = cli(capsys, "train", "data=mnist", "data.held_out=seven", "trainer.epochs=1")
    assert code == 2
    assert "data.held_out='seven' is not a class of mnist" in err and "0 - zero" in err
