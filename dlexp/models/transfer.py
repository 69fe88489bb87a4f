"""Torchvision classification models for transfer learning, with a new output layer.

The wrapper adapts dlexp's images (in [0, 1]: data.normalize=unit) to what the weights were
trained on: grey images repeated to three channels, resized to the weights' crop size and
normalised with their mean and std. Pretrained weights come from torch's cache
($TORCH_HOME/hub/checkpoints); when they are not there and cannot be downloaded, the run
stops before any work with the file name, the folder and the URL.
"""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dlexp.errors import DlexpError
from dlexp.models.layers import require_images

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def weights_enum(backbone: str, weights: str | None):
    """The torchvision weights enum member for `weights` (DEFAULT or a name), or None."""
    if weights in (None, "none", "None", ""):
        return None
    try:
        options = torchvision.models.get_model_weights(backbone)
    except (ValueError, KeyError) as err:
        raise DlexpError(
            f"model.backbone={backbone!r} is not a torchvision classification model; use one of "
            f"resnet18, resnet34, resnet50, vgg11, vgg16, vgg19, alexnet, mobilenet_v3_small, "
            f"efficientnet_b0 (any name from torchvision.models.list_models())."
        ) from err
    try:
        return options[weights]
    except KeyError as err:
        names = ", ".join(["DEFAULT", *(w.name for w in options)])
        raise DlexpError(
            f"model.weights={weights!r} is not known for {backbone}; use none or one of {names}."
        ) from err


def weights_file(weights) -> tuple[Path, str]:
    """Where torch caches these weights, and where they come from."""
    url = weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


def load_weights(weights, backbone: str, download: bool = True) -> dict[str, torch.Tensor]:
    """The weights' state dict from torch's cache, downloading it first when allowed and possible."""
    path, url = weights_file(weights)
    if not path.is_file():
        if not download:
            raise _missing(path, url, backbone, "")
        path.parent.mkdir(parents=True, exist_ok=True)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)
        try:
            torch.hub.download_url_to_file(url, str(path), progress=False)
        except Exception as err:
            path.unlink(missing_ok=True)
            raise _missing(
                path, url, backbone, f" (the download failed: {type(err).__name__}: {err})"
            ) from err
        finally:
            socket.setdefaulttimeout(previous)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DlexpError(
            f"{path} is not a readable weights file ({type(err).__name__}); delete it and download again."
        ) from err


def _missing(path: Path, url: str, backbone: str, why: str) -> DlexpError:
    return DlexpError(
        f"pretrained weights {path.name} are not in torch's cache folder {path.parent}{why}. "
        f"Download {url} into that folder (the folder is $TORCH_HOME/hub/checkpoints), or run "
        f"`dlexp weights {backbone} download=true` where there is internet, or train from "
        f"scratch with model.weights=none."
    )


def replace_head(model: nn.Module, num_outputs: int) -> str:
    """Swap the last Linear layer (resnet's fc, vgg's classifier.6, ...) for a new one."""
    name, last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.Linear(last.in_features, num_outputs))
    return name


class TorchvisionClassifier(nn.Module):
    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        backbone: str = "resnet18",
        weights: str | None = "DEFAULT",
        freeze_backbone: bool = False,
        resize: int | str | None = "auto",
        download: bool = True,
        frozen_bn_stats: bool = True,
    ) -> None:
        super().__init__()
        require_images(input_shape, "transfer", "model=ann")
        chosen = weights_enum(backbone, weights)
        if chosen is None:
            weights_enum(backbone, "DEFAULT")  # still check that the backbone exists
        self.net = torchvision.models.get_model(backbone, weights=None)
        if chosen is not None:
            self.net.load_state_dict(load_weights(chosen, backbone, download))
        self.head_name = "net." + replace_head(self.net, num_outputs)
        if freeze_backbone:
            from dlexp.models import freeze

            freeze(self, [], [f"{self.head_name}.*"], keep_bn_stats=frozen_bn_stats)
        meta = chosen.transforms() if chosen is not None else None
        mean, std = (meta.mean, meta.std) if meta is not None else (IMAGENET_MEAN, IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if resize == "auto":  # the weights' own crop size; native size when training from scratch
            resize = meta.crop_size[0] if meta is not None else None
        self.size = int(resize) if resize else None
        self.grey = input_shape[0] == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grey:
            x = x.expand(-1, 3, -1, -1)
        if self.size and x.shape[-1] != self.size:
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )
        return self.net((x - self.mean) / self.std)
