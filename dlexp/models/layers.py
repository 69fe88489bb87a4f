"""Small pieces shared by the models: activations by name and weight initialisation."""

from __future__ import annotations

from torch import nn

from dlexp.errors import DlexpError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "relu6": nn.ReLU6,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "linear": nn.Identity,  # no non-linearity (the course's "linear problem" experiment)
}
INITS = ("default", "xavier", "kaiming", "normal")


def make_activation(name: str, key: str = "model.activation") -> nn.Module:
    if name not in ACTIVATIONS:
        raise DlexpError(f"{key}={name!r} is not known; use one of {', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[name]()


def init_weights(model: nn.Module, scheme: str, std: float = 0.01) -> None:
    """Re-initialise Linear and Conv layers unless scheme is 'default', as the course does:
    xavier (normal) and kaiming (uniform) redraw the weights and leave the biases as PyTorch drew
    them (DUDL_weights_CodeChallenge_XavierKaiming); normal draws weights and biases from
    N(0, std^2) (DUDL_weights_codeChallenge_weightstd sets every parameter)."""
    if scheme not in INITS:
        raise DlexpError(f"model.init={scheme!r} is not known; use one of {', '.join(INITS)}.")
    if scheme == "default":
        return
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            if scheme == "xavier":
                nn.init.xavier_normal_(m.weight)
            elif scheme == "kaiming":
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            else:
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.normal_(m.bias, 0.0, std)


def require_images(input_shape: tuple[int, ...], model: str, alternative: str) -> None:
    """Refuse tabular data for a model that needs (channels, height, width) images."""
    if len(input_shape) != 3:
        raise DlexpError(
            f"model={model} needs images (channels, height, width), but this data set is tabular "
            f"with {input_shape[0]} feature(s). Use {alternative} for tabular data, or an image "
            "data set (data=mnist, fashion_mnist, emnist, cifar10 or stl10)."
        )
