"""Transfer learning: from dlexp runs (init_from, freezing) and from torchvision models."""

from __future__ import annotations

import pytest
import torch
import torchvision

from conftest import cli, make_cfg, read_scalars
from dlexp.checkpoint import load_checkpoint
from dlexp.cli import main
from dlexp.data import load_data
from dlexp.models import build_model
from dlexp.run import train


def test_letters_to_digits_copies_conv_layers_replaces_head_and_freezes(env, tmp_path):
    letters = tmp_path / "letters"
    train(make_cfg("experiment=emnist_cnn", "trainer.epochs=1"), letters)
    source = load_checkpoint(letters / "checkpoints" / "last.pt")["model"]
    run = tmp_path / "digits"
    main(
        [
            "train",
            "experiment=transfer_letters_to_digits",
            f"model.init_from={letters}",
            "model.freeze=[features*]",
            "trainer.epochs=2",
            f"hydra.run.dir={run}",
        ]
    )
    after = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    conv = [k for k in source if k.startswith("features")]
    assert any(k.endswith("running_mean") for k in conv)
    assert all(torch.equal(after[k], source[k]) for k in conv)  # copied, frozen, BN stats kept
    head = [k for k in after if k.startswith("head") and after[k].dim() == 2][-1]
    assert source[head].shape == (26, 50) and after[head].shape == (10, 50)  # replaced
    log = (run / "train.log").read_text()
    assert f"{head} (shape (26, 50) there, (10, 50) here)" in log
    assert "trainable parameters:" in log and "before training: val/loss" in log
    scalars = read_scalars(run)
    assert scalars["val/acc"][0][0] == 0 and scalars["test/acc"][0][0] == 0  # step 0: before tuning


def test_resnet18_from_scratch_with_frozen_backbone_changes_only_fc(env, tmp_path):
    overrides = [
        "model=transfer",
        "data=stl10",
        "model.weights=none",
        "model.freeze_backbone=true",
        "trainer.epochs=1",
    ]
    cfg = make_cfg(*overrides)
    data = load_data(cfg.data, cfg.seed)
    torch.manual_seed(cfg.seed)
    start = build_model(cfg.model, data.meta, 10).state_dict()
    train(cfg, tmp_path)
    after = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    changed = {k for k in start if not torch.equal(start[k], after[k])}
    assert changed == {"net.fc.weight", "net.fc.bias"}
    assert after["net.fc.weight"].shape == (10, 512)


def test_resnet18_loads_weights_from_torch_home(env, tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(123)
    pretrained = torchvision.models.resnet18().state_dict()
    torch.save(pretrained, home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(home))
    quick = ["model.resize=64", "trainer.epochs=1", "trainer.max_steps_per_epoch=2"]
    # The course's way (frozen_bn_stats=false): weights fixed, batch-norm statistics adapt.
    train(make_cfg("experiment=stl10_resnet18", *quick), tmp_path / "run")
    after = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    backbone = [k for k in pretrained if not k.startswith("fc.")]
    stats = {k for k in backbone if k.endswith(("running_mean", "running_var", "batches_tracked"))}
    assert all(torch.equal(after[f"net.{k}"], pretrained[k]) for k in set(backbone) - stats)
    assert all(not torch.equal(after[f"net.{k}"], pretrained[k]) for k in stats)
    # frozen_bn_stats=true: the frozen layers run as in evaluation, their statistics kept.
    cfg = make_cfg("experiment=stl10_resnet18", *quick, "model.frozen_bn_stats=true")
    train(cfg, tmp_path / "kept")
    after = load_checkpoint(tmp_path / "kept" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(after[f"net.{k}"], pretrained[k]) for k in backbone)


def test_missing_weights_offline_names_file_folder_and_url(env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    code, _, err = cli(capsys, "train", "model=transfer", "data=stl10")
    assert code == 2 and "Traceback" not in err
    assert "resnet18-f37072fd.pth" in err
    assert str(tmp_path / "hub" / "checkpoints") in err
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in err
    code, out, _ = cli(capsys, "weights", "vgg16")
    assert code == 0 and "vgg16 VGG16_Weights.IMAGENET1K_V1: missing" in out
    assert "vgg16-397923af.pth" in out


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.backbone=resnet9000"], "not a torchvision classification model"),
        (["model.weights=IMAGENET9K"], "model.weights='IMAGENET9K' is not known for resnet18"),
    ],
)
def test_bad_backbone_or_weights_name(overrides, message, env, tmp_path):
    with pytest.raises(Exception, match=message):
        train(make_cfg("model=transfer", "data=stl10", *overrides), tmp_path)


def test_grey_images_are_adapted_for_a_three_channel_backbone(env, tmp_path):
    metrics = train(
        make_cfg(
            "model=transfer",
            "data=mnist",
            "model.backbone=mobilenet_v3_small",
            "model.weights=none",
            "trainer.epochs=1",
        ),
        tmp_path,
    )
    assert metrics["status"] == "completed"
