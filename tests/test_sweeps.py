"""Experiments and sweeps: every experiment file runs, reports, HParams, Optuna, joblib, resume."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import scipy.stats
import torch
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import OmegaConf
from PIL import Image

from conftest import cli, dlexp, make_cfg, read_hparams, read_tags
from dlexp.build import build
from dlexp.checkpoint import load_checkpoint
from dlexp.cli import compose_train, config_dir, main
from dlexp.data import load_data
from dlexp.record import read_history
from dlexp.run import train
from test_presets import assert_states_survive

STARTS_FROM = {
    "ae_pretrain_classify": ["experiment=ae_fashion_pretrain"],
    "transfer_mnist_to_fashion": ["experiment=mnist_cnn"],
    "transfer_letters_to_digits": ["experiment=emnist_cnn"],
}
EXPERIMENTS = [
    pytest.param(name, marks=pytest.mark.slow) if name == "stl10_vgg16" else name  # 5 s of VGG
    for name in sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
]


# Files that only train another file's experiment longer: composed, not trained again.
LONGER = {"ae_cifar10_milestone": "ae_cifar10_cnn"}
# Code challenges that only sweep or resize a file tested in full: composed, not trained.
CHALLENGES = {
    "rnn_alternating_challenge": "rnn_alternating",
    "rnn_sine_challenge": "rnn_sine",
    "lstm_loremipsum_challenge": "lstm_loremipsum",
}
# Files a test of their own trains (tests/test_course_data.py, test_gans.py).
TRAINED_ELSEWHERE = {"mnist_missing7", "mnist_normalization", "find_gauss", "gauss_feature_maps"}


def values(spec: str) -> list[str]:
    """A sweep's values as Hydra reads them (`a,b,c`, `range(...)`, lists, dicts), each written
    back in override syntax."""
    (sweep,) = OverridesParser.create().parse_overrides([f"key={spec}"])
    return [Override._get_value_element_as_str(v) for v in sweep.sweep_iterator()]


def only_sweep(env) -> Path:
    (sweep,) = (Path(env["DLEXP_OUTPUTS"]) / "sweeps").iterdir()
    return sweep


def jobs(sweep: Path) -> list[Path]:
    return sorted(
        (p for p in sweep.iterdir() if (p / ".hydra").is_dir()),
        key=lambda p: int(p.name.split("_")[0]),
    )


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_runs(name, env, tmp_path):
    """Each experiment file composes, keeps every value it states (tests/test_presets.py),
    and trains: a single run for one epoch of two steps, a sweep as its first job."""
    cfg = compose_train(f"experiment={name}", hydra=True)
    assert_states_survive(config_dir() / "experiment" / f"{name}.yaml", cfg)
    params = dict(cfg.hydra.sweeper.params or {})
    parent = LONGER.get(name, name.removesuffix("_quick"))
    if parent != name:  # a lighter (or longer) look at a file tested in full: it composes
        full = compose_train(f"experiment={parent}", hydra=True)
        assert (
            params != dict(full.hydra.sweeper.params or {})
            or cfg.trainer.epochs != full.trainer.epochs
        )
        return
    if name in TRAINED_ELSEWHERE:  # composed and checked above; trained by its own test
        return
    if name in CHALLENGES:  # the same data and model keys as the file it varies
        full = compose_train(f"experiment={CHALLENGES[name]}")
        assert (full.data.name, full.model._target_) == (cfg.data.name, cfg.model._target_)
        return
    quick = ["trainer.epochs=1", "trainer.max_steps_per_epoch=2", "trainer.progress=none"]
    if name in STARTS_FROM:  # these continue another run: make that one first
        train(make_cfg(*STARTS_FROM[name], *quick), run_dir=tmp_path / "source")
        quick.append(f"model.init_from={tmp_path / 'source'}")
    if name.startswith("stl10_"):  # no ImageNet weights offline
        quick += ["model.weights=none", "model.resize=32"]
    if name.startswith("dcgan_") or name == "gan_gauss":  # the architecture, a fraction as wide
        quick.append("model.channels=[32,16,8,4]")
    source = cfg.data.get("source") or {}
    if "n_per_class" in source and name.startswith("gauss_"):  # generated: fewer images
        quick.append("data.source.n_per_class=50")
    elif "n" in source and cfg.data.name.startswith(("gaussian_", "bars")):
        quick.append("data.source.n=100")
    if name.startswith("lstm_loremipsum"):  # the notebook's 512 x 3 LSTM: a fraction as wide
        quick += ["model.hidden=16", "data.eval_batch_size=4096"]
    if name.startswith("style_"):  # (AlexNet's strides need 64 px)
        quick += ["model.weights=none", "data.size=64", "data.repeat=2"]
    if not params:  # (plain values: set on the composed config, as Hydra would set them)
        del cfg.hydra
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(quick))
    else:  # the sweep's first job (its first value of every swept key): `dlexp train -m` itself
        # is tested with its launchers elsewhere (test_parity, test_batched, the tests below)
        sweep = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
        assert all(o.is_sweep_override() or o.value() is not None for o in sweep)
        cut = [f"{k}={values(v)[0]}" for k, v in params.items()]
        cfg = make_cfg(f"experiment={name}", *quick, *cut)
    assert train(cfg, run_dir=tmp_path / "run")["status"] == "completed"


def test_course_sizes_are_in_the_experiments(env):
    iris = make_cfg("experiment=ann_iris")
    assert list(iris.model.hidden) == [64, 64] and iris.optimizer.lr == 0.01
    assert iris.optimizer._target_.endswith("SGD")
    assert list(make_cfg("experiment=mnist_ffn").model.hidden) == [64, 32, 32]
    cifar = make_cfg("experiment=cifar10_milestone").model
    assert [b.channels for b in cifar.blocks] == [64, 128, 256] and cifar.batch_norm
    assert [b.padding for b in cifar.blocks] == [1, 0, 0] and list(cifar.head) == [256, 64]
    assert make_cfg("experiment=fashion_mnist_milestone").data.augment.hflip


def test_width_and_depth_build_the_hidden_layers(env, tmp_path):
    train(make_cfg("model.width=8", "model.depth=3", "trainer.epochs=1"), run_dir=tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]
    shapes = [tuple(v.shape) for k, v in state.items() if k.endswith("weight")]
    assert shapes == [(8, 4), (8, 8), (8, 8), (3, 8)]


def test_shifted_images_are_each_rolled_by_their_own_amount(env):
    """The course's shifted MNIST: every image wrapped sideways by a random -10..10 pixels."""
    plain = load_data(make_cfg("data=mnist").data, seed=0)
    rolled = load_data(make_cfg("data=mnist", "data.roll=10").data, seed=0)
    assert torch.equal(rolled.train.x, plain.train.x)  # the FFN notebook: test images only
    shifts = set()
    for a, b in zip(plain.test.x, rolled.test.x, strict=True):
        match = [k for k in range(-10, 11) if torch.equal(torch.roll(a, k, dims=-1), b)]
        assert match
        shifts.add(match[0])
    assert len(shifts) > 5  # not one shift for all
    both = load_data(make_cfg("experiment=mnist_cnn_shifted").data, seed=0)
    assert not torch.equal(
        both.train.x, load_data(make_cfg("experiment=mnist_cnn").data, 0).train.x
    )


def test_four_job_sweep_report_csv_plot_and_hparams(env):
    main(["train", "-m", "optimizer=sgd,adam", "optimizer.lr=0.1,0.001", "trainer.epochs=2"])
    sweep = only_sweep(env)
    assert len(jobs(sweep)) == 4 and (sweep / "multirun.yaml").is_file()
    for job in jobs(sweep):
        hparams, metric_tags = read_hparams(job)
        assert hparams["optimizer"] in ("sgd", "adam")
        assert hparams["optimizer.lr"] in (0.1, 0.001)  # a number, as the config types it
        assert {"val/acc", "test/acc"} <= set(metric_tags)
        assert "custom_scalars__config__" in read_tags(job)["tensors"]  # train vs val charts
        assert (
            len(list(job.glob("events.out.tfevents.*"))) == 1
        )  # one run per job, no stray sub-runs
    (sweep / "summary.csv").unlink()

    result = dlexp("report", str(sweep), "metric=test/acc", env=env)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert len(rows) == 4 and {r["optimizer"] for r in rows} == {"sgd", "adam"}
    accs = [float(r["test/acc"]) for r in rows]
    assert accs == sorted(accs, reverse=True)
    best_line = next(
        line for line in result.stdout.splitlines() if line.lstrip("│ ").startswith("*")
    )
    assert f"{accs[0]:.4f}" in best_line
    png = sweep / "summary.png"
    width, height = Image.open(png).size
    assert width >= 400 and height >= 300  # a real plot, not an empty file


def test_report_on_a_partly_failed_and_running_sweep(env):
    main(
        [
            "train",
            "-m",
            "data=regression",
            "optimizer=sgd",
            "optimizer.lr=1e6,0.01,0.001",
            "trainer.epochs=1",
        ]
    )
    sweep = only_sweep(env)
    (jobs(sweep)[2] / "metrics.json").unlink()  # as if still running
    result = dlexp("report", str(sweep), env=env)
    assert result.returncode == 0, result.stderr
    statuses = {
        r["job"].split("_")[0]: r["status"] for r in csv.DictReader((sweep / "summary.csv").open())
    }
    assert statuses == {"0": "diverged", "1": "completed", "2": "running"}
    missing = dlexp("report", str(sweep / "nope"), env=env)
    assert missing.returncode == 2 and "is not a folder" in missing.stderr


def test_sweep_resume_skips_finished_jobs(env):
    args = ["train", "-m", "optimizer.lr=0.01,0.001", "trainer.epochs=1"]
    main(args)
    sweep = only_sweep(env)
    first = [(j / "metrics.json").read_text() for j in jobs(sweep)]
    (jobs(sweep)[1] / "metrics.json").unlink()  # this one "did not finish"
    main([*args, "sweep.resume=true"])
    assert only_sweep(env) == sweep  # the same folder, no new sweep
    assert (jobs(sweep)[0] / "metrics.json").read_text() == first[0]  # skipped, untouched
    assert "already finished, skipped" in (jobs(sweep)[0] / "train.log").read_text()
    assert json.loads((jobs(sweep)[1] / "metrics.json").read_text())["status"] == "completed"


def test_optuna_search_optimises_the_objective(env):
    main(
        [
            "train",
            "-m",
            "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=4",
            "hydra.sweeper.direction=maximize",
            "optimizer.lr=interval(0.001,0.1)",
            "trainer.epochs=2",
        ]
    )
    sweep = only_sweep(env)
    assert len(jobs(sweep)) == 4
    vals = [json.loads((j / "metrics.json").read_text())["val/acc"] for j in jobs(sweep)]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(vals))
    # The summary's first (starred) row is a job with Optuna's best value, by the same metric.
    first = next(csv.DictReader((sweep / "summary.csv").open()))
    assert float(first["val/acc"]) == pytest.approx(results["best_value"])


@pytest.mark.slow  # worker processes start torch (~11 s)
def test_joblib_launcher_runs_jobs_in_parallel_processes(env):
    main(
        [
            "train",
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "optimizer.lr=0.01,0.001",
            "trainer.epochs=1",
        ]
    )
    done = jobs(only_sweep(env))
    assert len(done) == 2
    assert all(json.loads((j / "metrics.json").read_text())["status"] == "completed" for j in done)


def test_slurm_example_launcher_composes(env):
    cfg = compose_train("hydra/launcher=dlexp_slurm", hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (
        launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.timeout_min == 120
    )


def test_failed_jobs_are_reported_and_the_sweep_says_how_many(env, capsys):
    # (label_smoothing 2.0 crashes inside torch; lr -1 is refused by validation)
    code, _, err = cli(
        capsys,
        "train",
        "-m",
        "trainer.epochs=1",
        "loss=cross_entropy",
        "loss.label_smoothing=0.0,2.0",
        "optimizer.lr=0.01,-1",
    )
    assert code == 1 and "3 of 4 sweep jobs failed" in err
    sweep = only_sweep(env)
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    by_job = {r["job"].split("_")[0]: r for r in rows}
    assert by_job["0"]["status"] == "completed"
    for job in ("1", "3"):
        assert by_job[job]["status"] == "failed" and "optimizer.lr=-1" in by_job[job]["reason"]
    assert by_job["2"]["status"] == "failed" and "label_smoothing" in by_job["2"]["reason"]
    assert Image.open(sweep / "summary.png").size[0] >= 400


def test_one_objective_for_the_sweeper_the_summary_the_report_and_best_pt(env, capsys):
    main(["train", "-m", "optimizer.lr=0.1,0.001,0.0001", "trainer.epochs=3"])
    sweep = only_sweep(env)
    metrics = [json.loads((j / "metrics.json").read_text()) for j in jobs(sweep)]
    assert {m["monitor"] for m in metrics} == {"val/acc"}
    assert cli(capsys, "report", str(sweep))[0] == 0
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert float(rows[0]["val/acc"]) == max(m["val/acc"] for m in metrics)  # starred = first
    for job in jobs(sweep):  # best.pt: the first epoch with the best val/acc
        best = load_checkpoint(job / "checkpoints" / "best.pt")["loop"]
        accs = [h["val/acc"] for h in read_history(job)]
        assert best["best"] == pytest.approx(max(accs)) and accs[best["epoch"] - 1] == max(accs)


def test_a_sweep_says_which_job_of_how_many_and_the_time_left(env, capsys):
    code, _, err = cli(capsys, "train", "-m", "optimizer.lr=0.1,0.01,0.001", "trainer.epochs=1")
    assert code == 0
    lines = [line for line in err.splitlines() if "sweep job" in line]
    assert lines[0] == "dlexp: sweep job 1 of 3"
    assert lines[2].startswith("dlexp: sweep job 3 of 3, about ") and lines[2].endswith(" s left")


def test_report_aggregates_repeated_runs_by_setting(env, tmp_path, capsys):
    # A sweep over seeds: per learning rate, n, mean and sd of the metric (the course's
    # repeated experiments), in the printed table, summary_by_setting.csv and the plot.
    main(
        [
            "train",
            "-m",
            "experiment=ann_lr_sweep",
            "optimizer.lr=0.01,0.1",
            "seed=0,1,2",
            "trainer.epochs=5",
            "trainer.progress=none",
        ]
    )
    sweep = only_sweep(env)
    capsys.readouterr()
    main(["report", str(sweep), "metric=val/loss"])
    out = capsys.readouterr().out
    assert "mean val/loss" in out and "│ 3 │" in out
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    settings = {
        r["optimizer.lr"]: r for r in csv.DictReader((sweep / "summary_by_setting.csv").open())
    }
    assert set(settings) == {"0.01", "0.1"}
    for lr, s in settings.items():
        values = [float(r["val/loss"]) for r in rows if r["optimizer.lr"] == lr]
        assert int(s["n"]) == len(values) == 3
        assert float(s["mean val/loss"]) == pytest.approx(statistics.mean(values))
        assert float(s["sd val/loss"]) == pytest.approx(statistics.stdev(values))
        assert f"{statistics.mean(values):.4f}" in out
    assert (sweep / "summary.png").is_file()
    # Two settings repeated: Student's t-test of their values, as scipy computes it.
    ttest = json.loads((sweep / "ttest.json").read_text())
    by_lr = [
        [float(r["val/loss"]) for r in rows if r["optimizer.lr"] == lr] for lr in ("0.01", "0.1")
    ]
    expected = scipy.stats.ttest_ind(*by_lr)
    assert ttest["p"] == pytest.approx(expected.pvalue) and abs(ttest["t"]) == pytest.approx(
        abs(expected.statistic)
    )
    assert f"p={expected.pvalue:.3g}" in out
    # The course's score: the mean of each job's last 3 epochs, from its TensorBoard history.
    main(["report", str(sweep), "metric=train/acc", "last=3"])
    out = capsys.readouterr().out
    rows = {r["job"]: r for r in csv.DictReader((sweep / "summary.csv").open())}
    for folder in jobs(sweep):
        history = [h["train/acc"] for h in read_history(folder)]
        assert len(history) == 5
        assert float(rows[folder.name]["train/acc last 3"]) == pytest.approx(
            statistics.mean(history[-3:])
        )
    assert "mean train/acc last 3" in out
    code, _, err = cli(capsys, "report", str(sweep), "metric=test/acc", "last=3")
    assert code == 2 and "trainer.test_every_epoch=true" in err


def test_cnn_dropout_sweep_puts_channel_dropout_after_each_conv_block(env, tmp_path):
    quick = ["trainer.epochs=1", "trainer.max_steps_per_epoch=3"]
    main(["train", "-m", "experiment=cnn_dropout_sweep", "model.conv_dropout=0,0.25", *quick])
    done = jobs(only_sweep(env))
    assert len(done) == 2
    rates = set()
    for job in done:
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        model = build(cfg, torch.device("cpu"))[2]
        drops = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout2d)]
        assert drops in ([], [0.25, 0.25])
        rates.add(cfg.model.conv_dropout)
    assert rates == {0, 0.25}


@pytest.mark.parametrize("launcher", ["basic", "batched"])
def test_fresh_weights_give_each_job_its_own_start(launcher, env, tmp_path):
    """sweep.fresh_weights: job k starts from init_seed = seed + k (on the same data), stored
    in its config; without it every job starts from the seed's weights."""
    starts = {}
    for fresh in ("false", "true"):
        out = tmp_path / fresh
        main(
            [
                "train",
                "-m",
                f"hydra/launcher={launcher}",
                f"hydra.sweep.dir={out}",
                "optimizer=sgd",
                "optimizer.lr=1e-12",  # the weights stay where they started
                "optimizer.momentum=0,0.5",
                f"sweep.fresh_weights={fresh}",
                "trainer.epochs=1",
                "trainer.progress=none",
            ]
        )
        done = jobs(out)
        starts[fresh] = [
            torch.load(j / "checkpoints" / "last.pt", weights_only=True)["model"] for j in done
        ]
        seeds = [
            yaml.safe_load((j / ".hydra" / "config.yaml").read_text())["init_seed"] for j in done
        ]
        assert seeds == ([None, None] if fresh == "false" else [42, 43])
    shared, fresh = starts["false"], starts["true"]
    same = lambda a, b: all(torch.allclose(a[k], b[k], atol=1e-8) for k in a)  # noqa: E731
    assert same(shared[0], shared[1]) and same(fresh[0], shared[0])  # job 0: the seed's
    assert not torch.allclose(fresh[0]["body.1.weight"], fresh[1]["body.1.weight"], atol=1e-3)
    _, _, model = build(make_cfg("init_seed=43"), torch.device("cpu"))
    assert same(model.state_dict(), fresh[1])


def test_l1_sweep_reports_the_weights_it_shrinks(env):
    """weights/mean_abs: the mean absolute weight (biases excluded), falling with lambda."""
    out = Path(env["DLEXP_OUTPUTS"]) / "l1"
    quick = ["trainer.epochs=5", "trainer.progress=none", "sweep.fresh_weights=false"]
    main(
        [
            "train",
            "-m",
            "experiment=l1_sweep",
            "trainer.l1=0,0.5,5",
            f"hydra.sweep.dir={out}",
            *quick,
        ]
    )
    sizes = []
    for folder in jobs(out):
        metrics = json.loads((folder / "metrics.json").read_text())
        state = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["model"]
        weights = [v for k, v in state.items() if k.endswith("weight")]
        expected = sum(w.abs().sum() for w in weights) / sum(w.numel() for w in weights)
        assert metrics["weights/mean_abs"] == pytest.approx(float(expected), rel=1e-6)
        sizes.append(metrics["weights/mean_abs"])
    assert sizes[0] > sizes[1] > sizes[2]
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert "weights/mean_abs" in rows[0]
