"""GANs: both nets train, sample grids, resume with both optimizers, sampling, class filters."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from PIL import Image
from torch.optim.optimizer import register_optimizer_step_post_hook

from conftest import cli, make_cfg, read_scalars, read_tags
from dlexp.checkpoint import load_checkpoint
from dlexp.cli import main
from dlexp.data import load_data
from dlexp.models import build_model
from dlexp.run import train

QUICK = ["trainer.epochs=1", "trainer.max_steps_per_epoch=3", "trainer.log_every_steps=1"]
SMALL_DCGAN = "model.channels=[32,16,8,4]"


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=gan_mnist"],
        ["experiment=gan_fashion3"],
        ["experiment=dcgan_fashion", SMALL_DCGAN],
        ["experiment=dcgan_cifar10", SMALL_DCGAN],
    ],
)
def test_gans_train_both_nets_and_leave_samples(overrides, env, tmp_path):
    cfg = make_cfg(*overrides, *QUICK)
    data = load_data(cfg.data, cfg.seed)
    torch.manual_seed(cfg.seed)
    start = build_model(cfg.model, data.meta, None).state_dict()
    metrics = train(cfg, tmp_path)
    assert {"train/d_loss", "train/g_loss", "val/d_real", "test/d_fake"} <= set(metrics)
    after = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    for net in ("generator", "discriminator"):
        weights = [k for k in start if k.startswith(net) and k.endswith("weight")]
        assert any(not torch.equal(start[k], after[k]) for k in weights), net
    assert "samples" in read_tags(tmp_path)["images"]
    steps = read_scalars(tmp_path)
    for tag in ("train/d_loss_step", "train/g_loss_step", "train/d_real_step", "train/d_fake_step"):
        assert [s for s, _ in steps[tag]] == list(range(1, metrics["steps"] + 1))
    size = 64 if "dcgan" in overrides[0] else 28
    assert Image.open(tmp_path / "samples.png").size == (8 * (size + 2) + 2,) * 2  # 64 samples


def test_resume_restores_both_optimizers(env, tmp_path):
    train(make_cfg("model=gan", "data=mnist", "trainer.epochs=1"), tmp_path)
    first = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    steps = first["loop"]["step"]
    assert set(first["optimizers"]) == {"optimizer", "optimizer_d"}
    main(["train", f"trainer.resume={tmp_path}", "trainer.epochs=2"])
    second = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert second["loop"]["epoch"] == 2 and second["loop"]["step"] == 2 * steps
    for key in ("optimizer", "optimizer_d"):  # Adam's step counts went on from the checkpoint
        counts = {float(s["step"]) for s in second["optimizers"][key]["state"].values()}
        assert counts == {2.0 * steps}


def test_sample_command_writes_a_grid_of_the_requested_size(env, tmp_path, capsys):
    train(make_cfg("model=gan", "data=mnist", *QUICK), tmp_path / "run")
    out = tmp_path / "grid.png"
    code, _, err = cli(capsys, "sample", f"run={tmp_path / 'run'}", "n=10", f"out={out}")
    assert code == 0, err
    assert Image.open(out).size == (4 * 30 + 2, 3 * 30 + 2)  # 10 images of 28 px, 4 per row
    train(make_cfg("trainer.epochs=1"), tmp_path / "iris")
    code, _, err = cli(capsys, "sample", f"run={tmp_path / 'iris'}")
    assert code == 2 and "is not a GAN or sequence run" in err


def test_class_filter_by_name_and_index(env):
    by_name = load_data(
        make_cfg("data=fashion_mnist", "data.classes=[trouser,Sneaker,pullover]").data, 0
    )
    by_index = load_data(make_cfg("data=fashion_mnist", "data.classes=[1,7,2]").data, 0)
    assert (
        by_name.meta.class_names == ["Trouser", "Sneaker", "Pullover"]
        and by_name.meta.num_classes == 3
    )
    assert torch.equal(by_name.train.y, by_index.train.y) and set(by_name.test.y.tolist()) == {
        0,
        1,
        2,
    }
    with pytest.raises(Exception, match="'sock' is not a class of fashion_mnist"):
        load_data(make_cfg("data=fashion_mnist", "data.classes=[sock]").data, 0)


def test_quality_score_from_a_dlexp_classifier(env, tmp_path):
    train(make_cfg("model=cnn", "data=mnist", "trainer.epochs=2"), tmp_path / "clf")
    metrics = train(
        make_cfg("model=gan", "data=mnist", *QUICK, f"task.quality_from={tmp_path / 'clf'}"),
        tmp_path / "gan",
    )
    assert 1.0 <= metrics["val/quality"] <= 10.0 and 0.1 <= metrics["val/confidence"] <= 1.0
    assert "val/quality" in read_scalars(tmp_path / "gan")


def test_dcgan_needs_64_pixel_images(env, tmp_path):
    with pytest.raises(Exception, match=r"set data\.resize=64"):
        train(make_cfg("model=dcgan", "data=mnist", "data.resize=null", *QUICK), tmp_path)


@contextlib.contextmanager
def grad_norms_at_each_step() -> Iterator[list[tuple[int, float]]]:
    """(number of parameters, gradient norm) of every optimizer step, as the step used them."""
    seen: list[tuple[int, float]] = []

    def hook(optimizer, args, kwargs) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        seen.append((sum(p.numel() for p in params), float(norm)))

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize("clip", ["null", 0.01])
def test_gradient_clipping_applies_to_both_gan_optimizers(clip, env, tmp_path):
    with grad_norms_at_each_step() as seen:
        metrics = train(
            make_cfg("model=gan", "data=mnist", *QUICK, f"trainer.grad_clip={clip}"), tmp_path
        )
    assert len({n for n, _ in seen}) == 2 and len(seen) == 2 * metrics["steps"]  # G and D
    if clip == "null":
        assert max(norm for _, norm in seen) > 0.05
    else:
        assert all(norm <= clip * 1.0001 for _, norm in seen)


def test_dcgan_strides_make_the_gaussian_challenges_net(env, capsys):
    """experiment=gan_gauss_challenge: DUDL_GAN_codeChallengeGaus's three-layer nets."""
    from dlexp.build import build

    _, _, model = build(
        make_cfg("experiment=gan_gauss_challenge", "data.source.n=20"), torch.device("cpu")
    )
    convs = [m for m in model.generator if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.stride, m.padding) for m in convs] == [
        (100, 256, (4, 4), (0, 0)),
        (256, 128, (4, 4), (0, 0)),
        (128, 1, (4, 4), (0, 0)),
    ]
    convs = [m for m in model.discriminator if isinstance(m, torch.nn.Conv2d)]
    assert [(m.out_channels, m.stride) for m in convs] == [(64, (3, 3)), (128, (3, 3)), (1, (3, 3))]
    assert model.generator(torch.randn(2, 100)).shape == (2, 1, 64, 64)
    default = build(
        make_cfg("model=dcgan", "data=gaussian_widths", "data.source.n=20"), torch.device("cpu")
    )[2]
    strides = [m.stride[0] for m in default.generator if isinstance(m, torch.nn.ConvTranspose2d)]
    assert strides == [1, 2, 2, 2, 2]  # DCGAN's layout unchanged
    code, _, err = cli(capsys, "train", "experiment=gan_gauss_challenge", "model.d_stride=2")
    assert (
        code == 2
        and "model.d_stride" not in err
        and "it must make (1, 64, 64)" in " ".join(err.split())
    )
