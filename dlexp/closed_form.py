"""Closed-form gradients of a plain MLP: the course's tiny full-batch nets without autograd.

A course experiment trains a 2-1-1 net on 200 points for 1,000 full-batch epochs. Each step is
a dozen microsecond-sized ops, and autograd's bookkeeping (a graph node per op, the engine's
walk back through it, the optimizer's wrapper around the step) costs more than the maths:
measured here, forward + loss + backward + SGD step take ~100 µs with autograd and ~50 µs
written out, which is what lets a dlexp run (a validation pass, metrics and checkpoints every
epoch) train as fast as the notebook's bare loop.

Written out means: each Linear layer is one addmm, its backward two matmuls and a sum, each
activation's backward is the ATen kernel autograd itself calls, and the loss's gradient is the
task's (`Task.loss_and_grad`). The torch optimizer then steps on those gradients as on
autograd's, so its state, schedulers, clipping and checkpoints are unchanged; gradients agree
with autograd's to float rounding (tests/test_closed_form.py). `trainer.closed_form=false`
uses autograd for every run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dlexp.models.mlp import MLP
from dlexp.tasks.base import Task

aten = torch.ops.aten

# Each activation's forward, and its backward as autograd computes it: (layer, gradient at
# its output, its input, its output) -> the gradient at its input.
ACTIVATIONS: dict[type, tuple[Callable, Callable]] = {
    nn.ReLU: (
        lambda m, x: torch.relu(x),
        lambda m, g, x, y: aten.threshold_backward.default(g, y, 0),
    ),
    nn.LeakyReLU: (
        lambda m, x: F.leaky_relu(x, m.negative_slope),
        lambda m, g, x, y: aten.leaky_relu_backward(g, x, m.negative_slope, False),
    ),
    nn.ReLU6: (lambda m, x: F.relu6(x), lambda m, g, x, y: aten.hardtanh_backward(g, x, 0.0, 6.0)),
    nn.Tanh: (lambda m, x: torch.tanh(x), lambda m, g, x, y: aten.tanh_backward(g, y)),
    nn.Sigmoid: (lambda m, x: torch.sigmoid(x), lambda m, g, x, y: aten.sigmoid_backward(g, y)),
    nn.GELU: (
        lambda m, x: F.gelu(x, approximate=m.approximate),
        lambda m, g, x, y: aten.gelu_backward(g, x, approximate=m.approximate),
    ),
    nn.ELU: (
        lambda m, x: F.elu(x, m.alpha),
        lambda m, g, x, y: aten.elu_backward(g, m.alpha, 1, 1, False, x),
    ),
    nn.Identity: (lambda m, x: x, lambda m, g, x, y: g),
}


def why_not(model: nn.Module, task: Task, optimizers: dict, compiled: bool) -> str | None:
    """Why this run's gradients need autograd (None: they have a closed form here)."""
    if type(model) is not MLP:
        return f"the model is {type(model).__name__}, not the MLP"
    layers = [m for m in model.modules() if not list(m.children())]
    other = [
        type(m).__name__ for m in layers if not isinstance(m, (nn.Flatten, nn.Linear, *ACTIVATIONS))
    ]
    if other:
        return f"it has {', '.join(sorted(set(other)))} layers"
    if any(m.bias is None for m in layers if isinstance(m, nn.Linear)):
        return "a Linear layer has no bias"
    if not all(p.requires_grad for p in model.parameters()):
        return "some of its layers are frozen"
    if type(task).train_step is not Task.train_step or type(task).prepare is not Task.prepare:
        return f"task {type(task).__name__} has its own training step"
    if not task.closed_form_loss:
        return f"task {type(task).__name__}'s loss has no closed-form gradient here"
    if list(optimizers) != ["optimizer"] or isinstance(optimizers["optimizer"], torch.optim.LBFGS):
        return "the optimizer re-evaluates the loss (L-BFGS)"
    if compiled:
        return "the model is compiled"
    return None


class _Linear:
    def __init__(self, m: nn.Linear) -> None:
        self.weight, self.bias = m.weight, m.bias
        with torch.no_grad():  # (a view: the optimizer's in-place updates show through it)
            self.weight_t = m.weight.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight_t)  # (what nn.Linear computes)

    def backward(self, grad, x, y, needs_input: bool) -> torch.Tensor | None:
        self.weight.grad, self.bias.grad = grad.t().mm(x), grad.sum(0)
        return grad.mm(self.weight) if needs_input else None


class _Activation:
    def __init__(self, m: nn.Module) -> None:
        self.module, (self._forward, self._backward) = m, ACTIVATIONS[type(m)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(self.module, x)

    def backward(self, grad, x, y, needs_input: bool) -> torch.Tensor:
        return self._backward(self.module, grad, x, y)


class ClosedFormMLP:
    """The MLP's forward pass (callable like the model, under no_grad or inference_mode), and
    its gradients. It holds the model's own parameters (looking them up on the modules costs a
    microsecond each): build it after the model is on its device."""

    def __init__(self, model: MLP, task: Task) -> None:
        self.task = task
        self.layers = [  # (the leading Flatten aside)
            _Linear(m) if isinstance(m, nn.Linear) else _Activation(m)
            for m in model.modules()
            if isinstance(m, nn.Linear) or type(m) in ACTIVATIONS
        ]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def gradients(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sets every parameter's .grad to d(loss)/d(parameter); returns (outputs, loss)."""
        with torch.no_grad():
            values = [x.flatten(1)]  # each layer's input, then the outputs
            for layer in self.layers:
                values.append(layer.forward(values[-1]))
            loss, grad = self.task.loss_and_grad(values[-1], target)
            for i in range(len(self.layers) - 1, -1, -1):  # (the input needs no gradient)
                grad = self.layers[i].backward(grad, values[i], values[i + 1], needs_input=i > 0)
        return values[-1], loss
