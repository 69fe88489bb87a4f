"""Style transfer: Gram matrices, the loss falling, images out, resume, inputs, optimizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli, make_cfg, read_tags
from dlexp.checkpoint import load_checkpoint
from dlexp.cli import main
from dlexp.record import read_history
from dlexp.run import train
from dlexp.tasks.stylize import gram

QUICK = ["experiment=style_transfer", "model.weights=none", "data.size=32", "data.repeat=4"]


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    content, style = tmp_path / "content.png", tmp_path / "style.jpg"
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(content)
    Image.fromarray(rng.integers(0, 255, (70, 50, 3), dtype=np.uint8)).save(style)
    return content, style


def test_gram_matrix_by_hand():
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)  # C=2, H=1, W=2
    expected = torch.tensor([[5.0, 11.0], [11.0, 25.0]]) / 4  # F F^T / (C H W)
    assert torch.allclose(gram(f), expected)


def test_style_transfer_loss_falls_and_images_land(images, env, tmp_path):
    content, style = images
    cfg = make_cfg(
        *QUICK,
        f"data.content={content}",
        f"data.style={style}",
        "trainer.epochs=3",
        "task.out_size=64",
    )
    metrics = train(cfg, tmp_path)
    losses = [h["train/loss"] for h in read_history(tmp_path)]
    assert losses[-1] < losses[0]
    assert {"train/content", "train/style"} <= set(metrics)
    assert "stylized" in read_tags(tmp_path)["images"]
    assert Image.open(tmp_path / "stylized.png").size == (
        96,
        64,
    )  # content 60x40 -> shorter side 64


def test_demo_images_lbfgs_and_alexnet(env, tmp_path):
    for extra in (
        ["optimizer=lbfgs", "optimizer.max_iter=2"],
        ["model.backbone=alexnet", "task.content_layers=[1]", "task.style_layers=[0,1,2,3,4]"],
    ):
        metrics = train(make_cfg(*QUICK, "trainer.epochs=1", *extra), tmp_path / extra[0])
        assert metrics["status"] == "completed" and np.isfinite(metrics["train/loss"])


def test_resume_continues_from_the_saved_target_image(env, tmp_path):
    # Bit-for-bit on the CPU (GPU convolutions may be non-deterministic).
    base = [*QUICK, "device=cpu", "trainer.epochs=2"]
    train(make_cfg(*base), tmp_path / "straight")
    train(make_cfg(*QUICK, "device=cpu", "trainer.epochs=1"), tmp_path / "stopped")
    saved = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")["model"]
    assert set(saved) == {"target"}  # the checkpoint holds the image, not VGG
    main(["train", f"trainer.resume={tmp_path / 'stopped'}", "trainer.epochs=2"])
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]["target"]
    b = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")["model"]["target"]
    assert torch.equal(a, b) and not torch.equal(a, saved["target"])


def test_bad_image_paths_are_named(env, tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    code, _, err = cli(capsys, "stylize", f"content={tmp_path / 'nope.jpg'}", "model.weights=none")
    assert code == 2 and f"data.content={tmp_path / 'nope.jpg'}: there is no such file" in err
    code, _, err = cli(capsys, "stylize", f"style={tmp_path / 'notes.png'}", "model.weights=none")
    assert code == 2 and f"data.style={tmp_path / 'notes.png'} is not an image" in err


def test_precision_applies_to_style_transfer(env, tmp_path):
    dtypes = set()

    def hook(module, args, output) -> None:
        if torch.is_grad_enabled() and isinstance(module, torch.nn.Conv2d):  # training steps
            dtypes.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        train(make_cfg(*QUICK, "trainer.epochs=1", "trainer.precision=bf16"), tmp_path)
    finally:
        handle.remove()
    assert dtypes == {torch.bfloat16}  # the frozen VGG's convs ran under bf16 autocast
