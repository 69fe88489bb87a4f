"""Data loading: torchvision's readers on generated files, orientation, labels, splits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import fake_data
from conftest import cli, make_cfg
from dlexp.data import load_data
from dlexp.data.core import augment
from dlexp.data.images import cifar10, emnist, mnist, stl10
from dlexp.data.load import _split
from dlexp.errors import DlexpError
from dlexp.run import train


def test_mnist_reads_idx_files(data_root):
    raw = mnist(str(data_root))
    x, y = fake_data.images(200, 10, 1, 28, seed=0)
    assert raw.train.x.dtype == torch.uint8 and raw.train.x.shape == (200, 1, 28, 28)
    assert torch.equal(raw.train.x, torch.from_numpy(x))
    assert torch.equal(raw.train.y, torch.from_numpy(y))
    assert raw.meta.num_classes == 10 and raw.meta.input_shape == (1, 28, 28)


def test_emnist_letters_are_upright_and_zero_based(data_root):
    raw = emnist(str(data_root), split="letters")
    x, y = fake_data.images(260, 26, 1, 28, seed=2)  # what was drawn before transposing
    assert torch.equal(raw.train.x, torch.from_numpy(x))
    assert torch.equal(raw.train.y, torch.from_numpy(y))
    assert raw.meta.num_classes == 26
    assert raw.meta.class_names[:3] == ["a", "b", "c"] and "N/A" not in raw.meta.class_names


def test_cifar10_and_stl10_are_channels_first_and_upright(data_root):
    raw = cifar10(str(data_root))
    x, y = fake_data.images(40, 10, 3, 32, seed=10)
    assert raw.train.x.shape == (200, 3, 32, 32)
    assert torch.equal(raw.train.x[:40], torch.from_numpy(x))
    assert raw.meta.class_names[1] == "automobile"
    raw = stl10(str(data_root))
    x, y = fake_data.images(50, 10, 3, 96, seed=20)
    assert torch.equal(raw.train.x, torch.from_numpy(x))
    assert torch.equal(raw.train.y, torch.from_numpy(y))  # files hold 1..10


def test_missing_data_offline_names_files_and_remedy(tmp_path):
    with pytest.raises(DlexpError) as err:
        mnist(str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg and "data.download=true" in msg


def test_truncated_file_is_named_and_kept(tmp_path):
    fake_data.mnist_root(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(DlexpError, match=f"{bad} is truncated or corrupt"):
        mnist(str(tmp_path))
    assert bad.stat().st_size == 1000  # nothing deleted


def test_corrupt_cifar_batch_is_named(tmp_path):
    fake_data.cifar10_root(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"garbage")
    with pytest.raises(DlexpError, match=f"{bad} is truncated or corrupt"):
        cifar10(str(tmp_path))


def test_stratified_split_keeps_class_proportions():
    y = torch.tensor([0] * 80 + [1] * 20)
    keep, hold = _split(y, 0.25, seed=0, stratify=True)
    assert len(hold) == 25 and len(keep) == 75
    assert (y[hold] == 1).sum() == 5
    assert sorted(torch.cat([keep, hold]).tolist()) == list(range(100))
    again_keep, again_hold = _split(y, 0.25, seed=0, stratify=True)
    assert torch.equal(hold, again_hold) and torch.equal(keep, again_keep)


def test_load_data_splits_normalises_and_caps(env):
    cfg = make_cfg("data=mnist", "data.val_fraction=0.2")
    data = load_data(cfg.data, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (160, 40, 100)
    xb, _yb = next(data.batches(data.train, 64))
    assert xb.dtype == torch.float32 and xb.shape == (64, 1, 28, 28)
    # Normalised with the training split's statistics: about zero mean, unit variance.
    full = data.prepare(data.train.x)
    assert abs(full.mean().item()) < 1e-3 and abs(full.std().item() - 1) < 1e-2
    capped = load_data(make_cfg("data=mnist", "data.subset=30").data, seed=0)
    assert (len(capped.train), len(capped.val), len(capped.test)) == (30, 20, 30)


def test_iris_is_standardised_from_training_split(env):
    data = load_data(make_cfg().data, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (108, 12, 30)
    assert torch.allclose(data.train.x.mean(0), torch.zeros(4), atol=1e-5)
    assert data.meta.class_names == ["setosa", "versicolor", "virginica"]


def test_qwerties_and_regression_toys(env):
    q = load_data(make_cfg("data=qwerties", "data.source.n_per_class=50").data, seed=0)
    assert q.meta.num_classes == 2 and len(q.train) + len(q.val) + len(q.test) == 100
    three = make_cfg("data=qwerties", "data.source.centers=[[0,0],[4,0],[0,4]]")
    assert load_data(three.data, seed=0).meta.num_classes == 3
    r = load_data(make_cfg("data=regression", "data.source.n=200").data, seed=0)
    assert r.meta.num_classes == 0 and r.train.y.shape[1] == 1
    slope = (r.train.x * r.train.y).sum() / (r.train.x**2).sum()
    assert abs(slope.item() - 1.0) < 0.15


def test_batches_cover_the_split_once_in_seeded_order(env):
    data = load_data(make_cfg().data, seed=0)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    ys = torch.cat([y for _, y in data.batches(data.train, 10, gen())])
    assert len(ys) == len(data.train)
    assert torch.equal(ys, torch.cat([y for _, y in data.batches(data.train, 10, gen())]))
    assert not torch.equal(ys, data.train.y)  # shuffled


def test_augment_flips_and_shifts_whole_batches():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    torch.manual_seed(0)
    flipped = augment(x, hflip=True)
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))
    shifted = augment(x, shift=1)
    assert shifted.shape == x.shape
    # every output row is a (possibly zero-padded) shifted copy of the input's pixels
    assert set(shifted.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


@pytest.mark.parametrize(
    ("target", "extra", "classes"),
    [("quality_binary", [], 2), ("quality", [], 6), ("alcohol", ["task=regression"], 0)],
)
def test_wine_ships_and_is_prepared_as_the_course_does(target, extra, classes, env, tmp_path):
    from dlexp.data.tabular import wine

    raw = wine(target)
    assert len(raw.train) == 1597  # 1,599 wines less the two with total sulfur dioxide >= 200
    assert raw.meta.num_classes == classes
    assert raw.meta.input_shape == (11,)  # a feature target: the other 10 and quality (the course)
    assert torch.allclose(raw.train.x.mean(0), torch.zeros(raw.meta.input_shape), atol=1e-5)
    assert torch.allclose(raw.train.x.std(0), torch.ones(raw.meta.input_shape), atol=1e-5)
    if target == "quality_binary":
        assert int(raw.train.y.sum()) == 853  # quality > 5 (the two outliers dropped were 7s)
    metrics = train(
        make_cfg("data=wine", f"data.source.target={target}", "trainer.epochs=2", *extra),
        run_dir=tmp_path,
    )
    if classes == 2:
        assert metrics["test/acc"] > 0.65  # chance: 0.54
    elif classes == 0:
        assert metrics["test/corr"] > 0.3


def test_an_unknown_wine_target_names_the_choices(env, capsys):
    code, _, err = cli(capsys, "train", "data=wine", "data.source.target=colour")
    assert code == 2 and "quality_binary" in err and "residual sugar" in err


def test_k_fold_validation_splits_partition_the_training_data(env):
    from dlexp.data import load_data

    def rows(split):
        return {tuple(r) for r in split.x.tolist()}

    # (raw features: standardising uses each fold's own training statistics)
    cfgs = [make_cfg("data.folds=5", f"data.fold={i}", "data.standardize=false") for i in range(5)]
    folds = [load_data(cfg.data, seed=7) for cfg in cfgs]
    tests = [rows(d.test) for d in folds]
    assert all(t == tests[0] for t in tests)  # the test split is the same for every fold
    vals = [rows(d.val) for d in folds]
    every = rows(folds[0].train) | vals[0]
    assert sum(len(v) for v in vals) == len(every) == 120  # Iris after its 20% test split
    assert all(not (a & b) for i, a in enumerate(vals) for b in vals[i + 1 :])  # disjoint
    assert set().union(*vals) == every
    for d, v in zip(folds, vals, strict=True):
        assert not rows(d.train) & v and len(d.val) == 24
        assert sorted(d.val.y.tolist()).count(0) == 8  # stratified: 8 of each class


def test_a_k_fold_sweep_reports_mean_and_sd_over_the_folds(env, capsys):
    from dlexp.cli import main

    main(
        [
            "train",
            "-m",
            "data=iris",
            "data.folds=3",
            "data.fold=range(3)",
            "trainer.epochs=2",
            "trainer.progress=none",
        ]
    )
    (sweep,) = (Path(env["DLEXP_OUTPUTS"]) / "sweeps").iterdir()
    capsys.readouterr()
    main(["report", str(sweep)])
    out = capsys.readouterr().out
    assert "mean val/acc" in out and "│ 3 │" in out
    (row,) = list(csv.DictReader((sweep / "summary_by_setting.csv").open()))
    assert row["n"] == "3" and 0 <= float(row["mean val/acc"]) <= 1


def test_a_fold_outside_the_folds_is_one_paragraph(env, capsys):
    from conftest import cli

    code, _, err = cli(capsys, "train", "data.folds=3", "data.fold=3", "trainer.epochs=1")
    assert code == 2 and "data.fold=3 is not a fold of data.folds=3; use 0 to 2." in err


@pytest.mark.parametrize("how", ["oversample", "undersample", "smote"])
def test_balance_resamples_the_training_split_only(env, how):
    base = make_cfg("data=wine", "data.source.threshold=4")  # ~4% of the wines are <= 4
    plain = load_data(base.data, seed=1)
    fixed = load_data(
        make_cfg("data=wine", "data.source.threshold=4", f"data.balance={how}").data, seed=1
    )
    before = torch.bincount(plain.train.y).tolist()
    after = torch.bincount(fixed.train.y).tolist()
    assert before[0] < before[1] / 10 and after[0] == after[1]
    assert after[0] == (before[0] if how == "undersample" else before[1])
    for split in ("val", "test"):  # byte for byte what balance=none gives
        a, b = getattr(plain, split), getattr(fixed, split)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_class_weight_and_smote_change_per_class_recall(env, tmp_path, capsys):
    args = ["data=wine", "data.source.threshold=4", "trainer.epochs=3", "model.hidden=[16]"]
    plain = train(make_cfg(*args), run_dir=tmp_path / "none")
    weighted = train(make_cfg(*args, "data.balance=class_weight"), run_dir=tmp_path / "w")
    data = load_data(make_cfg(*args, "data.balance=class_weight").data, seed=42)
    n0, n1 = torch.bincount(data.train.y).tolist()
    w0, w1 = data.meta.class_weights
    assert w0 == pytest.approx((n0 + n1) / (2 * n0)) and w1 == pytest.approx((n0 + n1) / (2 * n1))
    rare = "test/recall/quality <= 4"
    assert plain[rare] < weighted[rare]  # the rare class is found more often
    code, _, err = cli(
        capsys, "train", *args, "data.balance=smote", f"hydra.run.dir={tmp_path / 's'}"
    )
    smote = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert code == 0, err
    assert smote[rare] != plain[rare] and "test/recall/quality > 4" in smote


def test_smote_on_images_and_balance_without_classes_are_one_paragraph(env):
    with pytest.raises(DlexpError, match=r"data\.balance=smote synthesises feature vectors"):
        load_data(make_cfg("data=mnist", "data.balance=smote").data, seed=0)
    with pytest.raises(DlexpError, match=r"data\.balance=oversample needs classes"):
        load_data(make_cfg("data=regression", "data.balance=oversample").data, seed=0)


def _write_table(path: Path, target_values, n: int = 60) -> Path:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=gen)
    lines = ["height,width,id,label"]
    for i in range(n):
        lines.append(f"{x[i, 0]:.4f},{x[i, 1]:.4f},{i},{target_values(i, x[i])}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_csv_table_trains_as_classes_or_as_a_regression(env, tmp_path, capsys):
    table = _write_table(tmp_path / "t.csv", lambda i, x: "tall" if x[0] > 0 else "short")
    args = [
        "data=csv",
        f"data.source.path={table}",
        "data.source.target=label",
        "data.source.drop=[id]",
        "trainer.epochs=20",
        f"hydra.run.dir={tmp_path / 'c'}",
    ]
    code, _, err = cli(capsys, "train", *args)
    metrics = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert code == 0, err
    assert {"test/recall/short", "test/recall/tall"} <= set(metrics) and metrics["test/acc"] > 0.8
    values = _write_table(tmp_path / "v.csv", lambda i, x: f"{2 * x[1]:.3f}")
    code, _, err = cli(
        capsys,
        "train",
        "data=csv",
        f"data.source.path={values}",
        "task=regression",
        "data.source.target=label",
        "trainer.epochs=2",
        f"hydra.run.dir={tmp_path / 'r'}",
    )
    assert code == 0, err
    assert "test/corr" in json.loads((tmp_path / "r" / "metrics.json").read_text())


def test_bad_csv_files_are_one_paragraph_each(env, tmp_path, capsys):
    good = _write_table(tmp_path / "t.csv", lambda i, x: i % 2)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,x\n3,oops,y\n")
    cases = [
        (
            [f"data.source.path={good}", "data.source.target=species"],
            "data.source.target='species' is not a column of",
        ),
        (
            [f"data.source.path={bad}", "data.source.target=label"],
            "line 3, column 'b': 'oops' is not a number",
        ),
        ([f"data.source.path={tmp_path / 'none.csv'}", "data.source.target=label"], "no such file"),
    ]
    for args, message in cases:
        code, _, err = cli(capsys, "train", "data=csv", *args, "trainer.epochs=1")
        assert code == 2 and message in err and "Traceback" not in err


def _write_images(root: Path, per_class: int = 12) -> Path:
    from PIL import Image

    for k, name in enumerate(["cats", "dogs"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.full((20, 24, 3), 40 + 150 * k, dtype=torch.uint8)
            pixels[i % 20] = 255  # a bright line somewhere
            Image.fromarray(pixels.numpy()).save(root / name / f"{i}.png")
    return root


def test_an_image_folder_trains_and_bad_folders_are_one_paragraph(env, tmp_path, capsys):
    root = _write_images(tmp_path / "pics")
    run = tmp_path / "run"
    code, _, err = cli(
        capsys,
        "train",
        "model=cnn",
        "data=image_folder",
        f"data.source.path={root}",
        "data.source.size=16",
        "trainer.epochs=2",
        f"hydra.run.dir={run}",
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert code == 0, err
    assert {"test/recall/cats", "test/recall/dogs"} <= set(metrics)
    (root / "birds").mkdir()
    code, _, err = cli(
        capsys, "train", "model=cnn", "data=image_folder", f"data.source.path={root}"
    )
    assert code == 2 and f"{root / 'birds'} holds no images" in err
    (root / "birds").rmdir()
    (root / "dogs" / "3.png").write_bytes(b"not a png")
    code, _, err = cli(
        capsys, "train", "model=cnn", "data=image_folder", f"data.source.path={root}"
    )
    assert code == 2 and f"{root / 'dogs' / '3.png'} is not a readable image" in err


def test_image_augmentation_draws_per_image_and_leaves_evaluation_alone(env):
    cfg = make_cfg(
        "data=mnist", "data.augment.rotate=20", "data.augment.scale=0.1", "data.augment.color=0.2"
    ).data
    data = load_data(cfg, seed=0)
    x = data.train.x[:16]
    torch.manual_seed(0)
    a = data.prepare(x, train=True)
    assert a.shape == (16, 1, 28, 28)
    plain = data.prepare(x)
    assert not torch.allclose(a, plain) and torch.equal(plain, data.prepare(x))  # eval: fixed
    # each image drew its own transform: the same image twice comes out two ways
    twice = data.prepare(x[:1].repeat(2, 1, 1, 1), train=True)
    assert not torch.allclose(twice[0], twice[1])


def test_tabular_noise_and_added_features(env):
    cfg = make_cfg(
        "data=qwerties", "data.features=[radius,square,products]", "data.augment.noise=0.5"
    ).data
    data = load_data(cfg, seed=0)
    plain = load_data(make_cfg("data=qwerties").data, seed=0)
    assert data.meta.input_shape == (2 + 1 + 2 + 1,) and data.train.x.shape[1] == 6
    x = plain.test.x
    torch.testing.assert_close(data.test.x[:, :2], x)
    torch.testing.assert_close(data.test.x[:, 2:4], x**2)
    torch.testing.assert_close(data.test.x[:, 4], x[:, 0] * x[:, 1])
    torch.testing.assert_close(data.test.x[:, 5], x.norm(dim=1))  # distance from the origin
    batch = data.train.x[:8]
    assert torch.equal(data.prepare(batch), batch)  # evaluation: no noise
    assert (data.prepare(batch, train=True) - batch).std() > 0.3
    with pytest.raises(DlexpError, match="on tabular data"):
        load_data(make_cfg("data=mnist", "+data.features=[square]").data, seed=0)


def test_doughnuts_are_two_rings(env):
    data = load_data(make_cfg("data=doughnuts", "data.standardize=false").data, seed=0)
    splits = (data.train, data.val, data.test)
    x, y = torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits])
    radius = x.norm(dim=1)
    assert len(y) == 400 and data.meta.num_classes == 2
    assert 8 < radius[y == 0].median() < 12 and 13 < radius[y == 1].median() < 17


def test_added_features_and_augmentation_reach_training(env, tmp_path):
    from dlexp.build import load_run

    cfg = make_cfg(
        "data=qwerties",
        "data.features=[radius,square]",
        "data.augment.noise=0.2",
        "trainer.epochs=2",
    )
    assert train(cfg, run_dir=tmp_path / "tab")["status"] == "completed"
    model = load_run(tmp_path / "tab").model  # rebuilt from the run's saved metadata
    assert model.body[1].in_features == 2 + 1 + 2  # x, y, radius, x^2, y^2
    args = ["model=cnn", "data=mnist", "trainer.epochs=1", "trainer.max_steps_per_epoch=3"]
    plain = train(make_cfg(*args), run_dir=tmp_path / "plain")
    moved = train(
        make_cfg(
            *args, "data.augment.rotate=20", "data.augment.scale=0.1", "data.augment.color=0.2"
        ),
        run_dir=tmp_path / "augmented",
    )
    assert plain["train/loss"] != moved["train/loss"]  # the same seed saw other images
