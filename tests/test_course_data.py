"""The course's data manipulations (binarised, scrambled, split-wise normalised MNIST, a class
held out) on generated MNIST files, through load_data and train(cfg)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import cli, make_cfg, read_tags
from dlexp.build import load_run
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


def test_gaussian_classes_are_two_widths(env):
    cfg = make_cfg("data=gaussian_classes", "data.source.noise=0", "data.source.offset=0")
    raw = load_data(cfg.data, seed=0)
    x = torch.cat([raw.train.x, raw.test.x])[:, 0]
    y = torch.cat([raw.train.y, raw.test.y])
    assert x.shape == (2000, 91, 91) and torch.bincount(y).tolist() == [1000, 1000]
    axis = torch.linspace(-4, 4, 91)
    for k, w in enumerate((1.8, 2.4)):  # exp(-r^2 / (2 w^2)), centred when offset=0
        expected = torch.exp(-(axis.view(1, -1) ** 2 + axis.view(-1, 1) ** 2) / (2 * w**2))
        assert torch.allclose(x[y == k][0], expected, atol=1e-6)
    assert raw.meta.class_names == ["width 1.8", "width 2.4"]


def test_gaussian_positions_targets_are_centre_and_width(env):
    cfg = make_cfg("data=gaussian_positions", "data.source.noise=0")
    data = load_data(cfg.data, seed=1)
    axis = torch.linspace(-4, 4, 91)
    x, t = data.train.x[:, 0], data.train.y
    assert t.shape == (900, 3) and data.meta.num_targets == 3
    assert t[:, 2].min() >= 5 and t[:, 2].max() <= 15
    inside = (t[:, :2].abs() < 3.9).all(1)  # the peak is on the grid
    peak = x[inside].flatten(1).argmax(1)
    rows, cols = peak // 91, peak % 91
    step = 8 / 90
    assert (axis[cols] - t[inside, 0]).abs().max() <= step / 2 + 1e-5  # x: columns
    assert (axis[rows] - t[inside, 1]).abs().max() <= step / 2 + 1e-5  # y: rows


def test_find_gauss_predicts_three_numbers(env, tmp_path, capsys):
    cfg = make_cfg("experiment=find_gauss", "data.source.n=100", "trainer.epochs=1")
    metrics = train(cfg, run_dir=tmp_path)
    weights = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert weights["head.3.weight"].shape == (3, 50)  # 1936 -> 50 -> 3, nothing between
    # test/corr is Pearson's r of every output pooled, as numpy computes it
    loaded = load_run(tmp_path)
    data = load_data(cfg.data, cfg.seed)
    with torch.no_grad():
        pred = loaded.model.eval()(data.prepare(data.test.x))
    assert pred.shape == (10, 3)
    expected = np.corrcoef(pred.flatten().numpy(), data.test.y.flatten().numpy())[0, 1]
    assert metrics["test/corr"] == pytest.approx(expected, rel=1e-4)
    assert metrics["test/loss"] == pytest.approx(
        float(((pred - data.test.y) ** 2).mean()), rel=1e-4
    )
    code, out, err = cli(capsys, "eval", f"run={tmp_path}")  # its stored meta: 3 outputs
    assert code == 0 and f"test/corr {metrics['test/corr']:.4f}" in out + err


def test_gauss_class_net_is_the_notebooks(env):
    from dlexp.build import build

    model = build(
        make_cfg("experiment=gauss_class", "data.source.n_per_class=20"), torch.device("cpu")
    )[2]
    kinds = [type(m).__name__ for m in model.features[0]]
    assert kinds == ["Conv2d", "ReLU", "AvgPool2d"]  # pooled after the activation
    assert [type(m).__name__ for m in model.head] == ["Flatten", "Linear", "Identity", "Linear"]
    assert model.head[1].in_features == 22 * 22 * 4 and model.head[3].out_features == 1
    soft = build(
        make_cfg("experiment=gauss_softcoding", "data.source.n_per_class=20"), torch.device("cpu")
    )[2]
    assert soft.features[0][0].kernel_size == (3, 2) and soft.features[0][0].stride == (2, 3)
    assert soft.head[1].in_features == 6 * 5 * 2  # the notebook's hand-computed size


def test_feature_maps_are_drawn_per_block(env, tmp_path):
    from PIL import Image

    cfg = make_cfg(
        "experiment=gauss_feature_maps", "data.source.n_per_class=20", "trainer.epochs=1"
    )
    train(cfg, run_dir=tmp_path)
    for name, channels in (("inputs", 1), ("block1", 6), ("block2", 4)):
        image = Image.open(tmp_path / f"feature_maps_{name}.png")
        side = {"inputs": 91, "block1": 45, "block2": 22}[name]
        assert image.size == (channels * (side + 2) + 2, 4 * (side + 2) + 2)  # 4 test images
    tags = read_tags(tmp_path)
    assert {"test/feature_maps/block1", "test/feature_maps/block2"} <= set(tags["images"])


def _shared(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many samples of b are also (exactly) in a."""
    seen = {bytes(x.numpy().tobytes()) for x in a}
    return sum(bytes(x.numpy().tobytes()) in seen for x in b)


def test_doubled_samples_before_the_split_leak_into_validation(env):
    base = ["data=mnist", "data.subset=100", "data.subset_first=true", "data.val_fraction=0.1"]
    plain = load_data(make_cfg(*base).data, seed=0)
    assert (len(plain.train), len(plain.val)) == (90, 10)  # N samples, then the split
    before = load_data(make_cfg(*base, "data.double=before_split").data, seed=0)
    assert (len(before.train), len(before.val)) == (180, 20)
    assert _shared(before.train.x, before.val.x) > 0  # twins of training digits
    after = load_data(make_cfg(*base, "data.double=after_split").data, seed=0)
    assert (len(after.train), len(after.val)) == (180, 10)
    assert _shared(after.train.x, after.val.x) == 0 and torch.equal(after.val.x, plain.val.x)
    assert torch.equal(after.train.x[:90], after.train.x[90:])  # every sample twice
    assert torch.equal(after.train.y[:90], after.train.y[90:])


def test_noisy_copies_are_the_images_plus_uniform_noise(env, capsys):
    base = ["data=mnist", "data.subset=100", "data.subset_first=true", "data.normalize=unit"]
    data = load_data(
        make_cfg(*base, "data.double=after_split", "data.double_noise=0.5").data, seed=0
    )
    x = data.train.x
    assert x.dtype == torch.float32 and len(x) == 180
    originals, copies = x[:90], x[90:]
    assert originals.max() <= 1 and torch.equal(originals * 255, originals.mul(255).round())
    noise = copies - originals
    assert noise.min() >= 0 and noise.max() < 0.5 and 0.2 < noise.mean() < 0.3
    batch = next(data.batches(data.train, 180))[0]
    assert torch.equal(batch, x)  # [0, 1] units, used as they are
    code, _, err = cli(
        capsys, "train", *base[:3], "data.double=after_split", "data.double_noise=0.5"
    )
    assert code == 2 and "set data.normalize=unit" in err


def test_bars_are_horizontal_or_vertical_by_class(env):
    raw = load_data(make_cfg("data=bars", "data.source.n=200").data, seed=0)
    x, y = torch.cat([raw.train.x, raw.test.x])[:, 0], torch.cat([raw.train.y, raw.test.y])
    full_rows = (x == 1).all(2).sum(1)  # rows of 1s: a horizontal bar's 2-5
    full_cols = (x == 1).all(1).sum(1)
    assert ((full_rows >= 2) & (full_rows <= 5))[y == 0].all() and (full_cols[y == 0] == 0).all()
    assert ((full_cols >= 2) & (full_cols <= 5))[y == 1].all() and (full_rows[y == 1] == 0).all()
    assert 60 < int(y.sum()) < 140 and raw.meta.class_names == ["horizontal", "vertical"]
