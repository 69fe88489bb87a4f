"""Style transfer's model: a frozen torchvision feature extractor and the image being optimised.

`forward()` returns the output of every Conv2d of the extractor (the course's feature layers)
for an image in [0, 1], normalised as the weights expect. The only trainable tensor is
`target`; the checkpoint holds it alone (the extractor comes back from torchvision).
"""

from __future__ import annotations

import logging

import torch
import torchvision
from torch import nn

from dlexp.errors import DlexpError
from dlexp.models.transfer import IMAGENET_MEAN, IMAGENET_STD, load_weights, weights_enum

log = logging.getLogger("dlexp")


class StyleTransfer(nn.Module):
    channels_last = False  # one image; L-BFGS needs plain contiguous gradients

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int | None = None,
        backbone: str = "vgg19",
        weights: str | None = "DEFAULT",
        download: bool = True,
    ) -> None:
        super().__init__()
        chosen = weights_enum(backbone, weights)
        if chosen is None:
            weights_enum(backbone, "DEFAULT")  # the backbone must exist
            log.warning(
                "model.weights=none: the features are random, so the result is meaningless (fine for tests)"
            )
        # Build on the meta device (no memory, no init) and keep only `features`: the classifier
        # of VGG19 alone is 120M parameters that style transfer never uses.
        with torch.device("meta"):
            net = torchvision.models.get_model(backbone, weights=None)
        if not hasattr(net, "features") or not any(isinstance(m, nn.Conv2d) for m in net.features):
            raise DlexpError(
                f"model.backbone={backbone} has no convolutional `features` (use vgg19, vgg16, alexnet, ...)."
            )
        features = net.features.to_empty(device="cpu")
        if chosen is not None:
            state = load_weights(chosen, backbone, download)
            features.load_state_dict(
                {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
            )
        else:
            for m in features.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        self.features = features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.target = nn.Parameter(torch.rand(1, *input_shape))

    def train(self, mode: bool = True) -> StyleTransfer:
        super().train(mode)
        self.features.eval()  # the extractor never leaves evaluation mode
        return self

    @property
    def num_layers(self) -> int:
        return sum(isinstance(m, nn.Conv2d) for m in self.features)

    def forward(self, image: torch.Tensor, count: int | None = None) -> list[torch.Tensor]:
        """The first `count` conv outputs (all by default); later layers are not run."""
        x, outputs = (image - self.mean) / self.std, []
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.Conv2d):
                outputs.append(x)
                if len(outputs) == count:
                    break
        return outputs

    # The checkpoint holds the image being optimised, not the fixed extractor.
    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return {"target": self.target.detach().clone()}

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        with torch.no_grad():
            self.target.copy_(state["target"])
