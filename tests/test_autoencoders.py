"""Autoencoders: dense, tied and convolutional; denoising and occlusion; encoders reused."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from conftest import make_cfg, read_tags
from dlexp.build import build
from dlexp.checkpoint import load_checkpoint
from dlexp.cli import main
from dlexp.models.autoencoder import ConvAutoencoder, DenseAutoencoder
from dlexp.run import train
from dlexp.tasks.reconstruction import Reconstruction


@pytest.mark.parametrize(
    ("model", "data", "extra"),
    [
        ("autoencoder", "mnist", []),
        ("autoencoder", "mnist", ["task.noise=0.3"]),
        ("autoencoder", "fashion_mnist", ["task.occlusion=3", "model.tied=true"]),
        (
            "autoencoder",
            "mnist",
            ["task.noise=0.25", "task.noise_kind=uniform", "task.corrupt=test"],
        ),
        ("cnn_autoencoder", "mnist", ["task.noise=0.2"]),
        ("cnn_autoencoder", "cifar10", []),
    ],
)
def test_autoencoders_train_and_leave_images(model, data, extra, env, tmp_path):
    metrics = train(
        make_cfg(f"model={model}", f"data={data}", "trainer.epochs=1", *extra), tmp_path
    )
    assert metrics["status"] == "completed" and 0 < metrics["test/mse"] < 0.5
    if any("noise" in e or "occlusion" in e for e in extra):
        assert metrics["test/input_mse"] > 0
        assert metrics["test/gain"] == pytest.approx(
            metrics["test/input_mse"] - metrics["test/mse"]
        )
    tags = read_tags(tmp_path)
    assert "reconstructions" in tags["images"] and "test/latent_pca" in tags["images"]
    size = 32 if data == "cifar10" else 28
    rows = 3 if any("noise" in e or "occlusion" in e for e in extra) else 2  # clean, (input), out
    grid = Image.open(tmp_path / "reconstructions.png")
    assert grid.size == (8 * (size + 2) + 2, rows * (size + 2) + 2)  # 8 test images a row
    assert Image.open(tmp_path / "latent_pca.png").size == (550, 500)
    assert (tmp_path / "projector_config.pbtxt").is_file()  # the embedding projector entry


def test_denoising_learns_to_beat_its_noisy_input(env, tmp_path):
    metrics = train(
        make_cfg("model=autoencoder", "data=mnist", "task.noise=0.4", "trainer.epochs=8"), tmp_path
    )
    assert metrics["test/gain"] > 0  # the output is closer to the clean image than the input


def test_occlusion_draws_one_white_bar_per_image():
    task = Reconstruction(occlusion=3)
    x = torch.zeros(16, 1, 28, 28)
    out = task.corrupt(x, torch.Generator().manual_seed(0))
    starts = []
    for img in out[:, 0]:
        rows, cols = (img == 1).any(1), (img == 1).any(0)
        assert (rows.sum() == 3 and cols.all()) or (cols.sum() == 3 and rows.all())
        starts.append(int((rows if rows.sum() == 3 else cols).nonzero()[0]))
    assert min(starts) >= 10 and max(starts) <= 20  # the course's band: rows/columns 10-20 of 28


def test_uniform_noise_only_brightens():
    x = torch.full((4, 1, 28, 28), 0.5)
    out = Reconstruction(noise=0.25, noise_kind="uniform").corrupt(x, None)
    assert (out >= 0.5).all() and (out <= 0.75).all() and out.std() > 0.05


def test_corrupt_test_trains_on_clean_inputs_and_scores_corrupted_ones(env, tmp_path):
    """The course's protocol: a plain autoencoder, shown noisy digits only when scored."""
    cfg = make_cfg("model=autoencoder", "data=mnist", "trainer.epochs=1", "task.noise=0.25")
    cfg.task.corrupt = "test"
    metrics = train(cfg, tmp_path)
    assert "train/input_mse" not in metrics and "train/gain" not in metrics
    assert metrics["test/input_mse"] > 0.001 and "test/gain" in metrics
    task = Reconstruction(noise=0.25, corrupt="test")
    x = torch.rand(2, 1, 28, 28)
    assert task.prepare(x, None, train=True)[0] is x
    assert not torch.equal(task.prepare(x, None, train=False)[0], x)


def test_tied_autoencoder_shares_the_encoder_weights():
    untied = DenseAutoencoder((1, 28, 28), hidden=[250], latent=50)
    tied = DenseAutoencoder((1, 28, 28), hidden=[250], latent=50, tied=True)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(untied) - count(tied) == 784 * 250 + 250 * 50
    x = torch.rand(4, 1, 28, 28)
    assert tied(x).shape == x.shape and (tied(x) >= 0).all() and (tied(x) <= 1).all()
    # The course's: only the latent layer's matrix is shared (784-128-50, 50-128 tied, 128-784).
    latent = DenseAutoencoder((1, 28, 28), hidden=[128], latent=50, tied="latent")
    free = DenseAutoencoder((1, 28, 28), hidden=[128], latent=50)
    assert count(free) - count(latent) == 128 * 50
    latent.body[3].weight.data.zero_()  # the shared matrix: zero it and the decoder sees zeros
    latent.tied_bias[0].data.fill_(-1.0)
    assert torch.allclose(latent(x), torch.sigmoid(latent.decoder[0].bias).view(1, 1, 28, 28))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 96, 96)])
def test_conv_autoencoder_restores_the_input_size(shape):
    blocks = [
        {"channels": c, "kernel": 4, "stride": 2, "padding": 1, "pool": None} for c in (16, 32, 64)
    ]
    model = ConvAutoencoder(shape, blocks=blocks)
    x = torch.rand(2, *shape)
    assert model(x).shape == x.shape


def test_classifier_starts_from_the_encoder_and_frozen_layers_stay(env, tmp_path):
    ae_run = tmp_path / "ae"
    train(make_cfg("model=autoencoder", "data=fashion_mnist", "trainer.epochs=1"), ae_run)
    encoder = {
        k: v
        for k, v in load_checkpoint(ae_run / "checkpoints" / "last.pt")["model"].items()
        if k.startswith("body")
    }
    assert set(encoder) == {"body.1.weight", "body.1.bias", "body.3.weight", "body.3.bias"}

    mlp = ["model=ann", "data=fashion_mnist", "model.hidden=[250,50]", "data.normalize=unit"]
    cfg = make_cfg(*mlp, f"model.init_from={ae_run}")
    start = build(cfg, torch.device("cpu"))[2].state_dict()
    assert all(torch.equal(start[k], v) for k, v in encoder.items())  # exact copies

    frozen = tmp_path / "frozen"
    main(
        [
            "train",
            *mlp,
            f"model.init_from={ae_run}",
            "model.freeze=[body*]",
            "trainer.epochs=1",
            f"hydra.run.dir={frozen}",
        ]
    )
    after = load_checkpoint(frozen / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(after[k], v) for k, v in encoder.items())  # frozen: unchanged
    assert not torch.equal(after["head.weight"], start["head.weight"])  # the head trained
    log = (frozen / "train.log").read_text()
    assert "copied 4 tensors" in log and "newly initialised here: head.weight, head.bias" in log
    assert "trainable parameters: 510; frozen: 208,800" in log


def test_pretrain_experiment_without_init_from_says_what_is_missing(env, tmp_path):
    with pytest.raises(Exception, match=r"model\.init_from must be given"):
        train(make_cfg("experiment=ae_pretrain_classify"), tmp_path)


def test_conv_autoencoder_output_layer_is_the_configured_one(env, tmp_path):
    # The default mirrors the course's: LeakyReLU, a linear output (a sigmoid output saturates
    # at 0 on mostly black digits and never learns); model.output chooses another.
    model = build(make_cfg("model=cnn_autoencoder", "data=mnist"), torch.device("cpu"))[2]
    assert isinstance(model.decoder[-1], torch.nn.Identity)
    assert isinstance(model.decoder[1], torch.nn.LeakyReLU)
    cfg = make_cfg("model=cnn_autoencoder", "data=mnist", "model.output=sigmoid")
    assert isinstance(build(cfg, torch.device("cpu"))[2].decoder[-1], torch.nn.Sigmoid)
    with pytest.raises(Exception, match=r"model.output='soft' is not known; use one of relu"):
        build(
            make_cfg("model=cnn_autoencoder", "data=mnist", "model.output=soft"),
            torch.device("cpu"),
        )


def test_gaussian_blobs_are_the_courses_images(env):
    from dlexp.data import load_data

    data = load_data(make_cfg("data=gaussian_blobs", "data.source.n=50").data, seed=3)
    x = data.train.x
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 91, 91)
    assert len(data.train) + len(data.test) == 50 and len(data.test) == 5
    # every image has its occluding bar: a full row or column of exactly 1
    rows = (x[:, 0] == 1).all(2).any(1)
    cols = (x[:, 0] == 1).all(1).any(1)
    assert (rows | cols).all()
    assert torch.equal(data.prepare(x[:2]), x[:2])  # float images are used as they are


@pytest.mark.parametrize("size", [91, 28])
def test_pooled_conv_autoencoder_restores_the_input_size(size):
    blocks = [{"channels": 6, "kernel": 3, "padding": 1, "stride": 1, "pool": "max"}] * 2
    model = ConvAutoencoder((1, size, size), blocks=blocks, activation="relu")
    assert model(torch.zeros(2, 1, size, size)).shape == (2, 1, size, size)
    kernels = [m.kernel_size for m in model.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    assert kernels == ([(3, 3)] * 2 if size == 91 else [(2, 2)] * 2)  # 22->45->91; 7->14->28


def test_gaussian_autoencoder_trains_and_draws_its_reconstructions(env, tmp_path):
    cfg = make_cfg("experiment=ae_gauss", "data.source.n=64", "trainer.epochs=3")
    metrics = train(cfg, run_dir=tmp_path)
    assert metrics["status"] == "completed" and metrics["test/mse"] > 0
    picture = Image.open(tmp_path / "reconstructions.png")
    assert picture.size[1] > 2 * 91  # input and output rows of 91-pixel images


def test_reconstructions_are_logged_about_50_times_a_run(env, tmp_path):
    # every epoch of a 1,000-epoch run would be hundreds of MB of pictures
    cfg = make_cfg(
        "experiment=ae_gauss", "data.source.n=40", "data.source.size=27", "trainer.epochs=100"
    )
    train(cfg, run_dir=tmp_path)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    steps = [e.step for e in acc.Images("reconstructions")]
    assert steps == list(range(2, 101, 2))  # every 2nd epoch (one step each): 50 pictures


def test_symmetric_images_are_shown_as_they_are(env, tmp_path):
    """[-1, 1] inputs (the course's Normalize(.5, .5)) come back to [0, 1] in the grid."""
    quick = ["trainer.epochs=1", "trainer.max_steps_per_epoch=2"]
    train(make_cfg("experiment=ae_fashion_pretrain", *quick), tmp_path / "ae")
    grid = torch.tensor(list(Image.open(tmp_path / "ae" / "reconstructions.png").getdata()))
    grid = grid.view(2 * 30 + 2, 8 * 30 + 2, -1)[..., 0]
    first = grid[2:30, 2:30].float() / 255  # the first clean test image
    data = build(make_cfg("experiment=ae_fashion_pretrain"), torch.device("cpu"))[0]
    assert torch.allclose(first, data.test.x[0, 0].float() / 255, atol=1 / 255)
    # The pretrained classifier starts from its encoder; the naive one needs requires=[].
    classify = ["experiment=ae_pretrain_classify", *quick]
    train(make_cfg(*classify, f"model.init_from={tmp_path / 'ae'}"), tmp_path / "pre")
    naive = make_cfg(*classify, "requires=[]", "seed=1")  # (seed 0 would draw the AE's init)
    assert train(naive, tmp_path / "naive")["status"] == "completed"
    conv = {
        run: load_checkpoint(tmp_path / run / "checkpoints" / "last.pt")["model"][
            "features.0.0.weight"
        ]
        for run in ("ae", "pre", "naive")
    }
    assert (conv["pre"] - conv["ae"]).abs().max() < 0.01  # two Adam steps from the encoder's
    assert (conv["naive"] - conv["ae"]).abs().max() > 0.1
