"""The interface the trainer drives; every task fills in what it needs.

Every task trains through the same path: `train_step` computes its loss(es) inside callables
it hands to `step(optimizer_key, compute)`, which the trainer provides. The trainer runs
`compute` under autocast, adds the L1 term, backpropagates through the grad scaler, clips
the gradients of that optimizer's parameters and steps it. A task with two optimizers (a GAN)
calls `step` twice; one that optimises an image (style transfer) steps its image.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of a metric (e.g. val/acc, val/loss) is the better one."""
    return not metric.endswith(("loss", "mse", "error"))


# step(optimizer key, compute) -> the loss that compute returned (detached)
Step = Callable[[str, Callable[[], torch.Tensor]], torch.Tensor]


class Task:
    monitor: str = "loss"  # the validation metric that picks best.pt (see higher_is_better)
    num_outputs: int | None = None  # what the model's output layer must produce
    # The default step runs the model's forward, which DistributedDataParallel synchronises;
    # a task that calls parts of its model (a GAN's generator, discriminator) is not ready.
    ddp_ready: bool = True
    # Optional hooks (None: the task has none, and the engine asks nothing per job):
    # extra_metrics(model, data) -> validation metrics that are not sums over batches (a GAN's
    # sample quality); epoch_report(writer, model, data, step) -> TensorBoard extras per epoch.
    extra_metrics: Callable | None = None
    epoch_report: Callable | None = None
    # A task whose jobs can train as one stacked model (dlexp.stacked) says so with a static
    # `why_not_stacked(**settings) -> str | None` (None: these settings can); its `loss` and
    # `sums` then take outputs and targets with a leading job dimension.

    def prepare(
        self, x: torch.Tensor, y: torch.Tensor, train: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's input and the loss's target for a batch."""
        return x, y

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train_step(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One training step on a batch: (loss, metric sums). The default: one forward pass."""
        x, target = self.prepare(x, y, train=True)
        outputs = []

        def compute() -> torch.Tensor:
            outputs.append(model(x))
            return self.loss(outputs[-1], target)

        loss = step("optimizer", compute)
        return loss, self.sums(outputs[-1].detach(), target, loss, x)

    def eval_step(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Metric sums of a held-out batch, and the outputs (kept for the final report)."""
        x, target = self.prepare(x, y, train=False)
        out = model(x)
        return self.sums(out, target, self.loss(out, target), x), out

    def sums(
        self, out: torch.Tensor, target: torch.Tensor, loss: torch.Tensor, inputs: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per-batch metric sums, kept on the device (no host sync)."""
        return {"loss": loss.detach().float() * target.shape[0]}

    def summarize(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, list[float]]:
        """Epoch metrics from the summed values (each of shape (jobs,)), one value per job:
        one host sync per epoch."""
        n = max(count, 1)  # (divided in Python, in double precision: fewer ops than on tensors)
        values = [
            [v / n for v in row] if isinstance(row, list) else row / n
            for row in torch.stack(list(sums.values())).tolist()
        ]
        return dict(zip(sums, values, strict=True))

    def begin(self, model: nn.Module, data, fresh: bool) -> None:
        """Called once before training (`fresh`: not resumed from a checkpoint)."""

    def runs(self) -> dict[str, str]:
        """Finished runs this task uses, by name (a GAN's quality classifier): dlexp.build
        loads them and hands them to `use_runs` (a task never loads runs itself)."""
        return {}

    def use_runs(self, loaded: dict[str, Any]) -> None:
        """The runs `runs()` named, loaded (dlexp.build.LoadedRun: config, meta, model)."""

    def parameter_groups(self, model: nn.Module) -> dict[str, list]:
        """Parameters per optimizer config key (a GAN has `optimizer` and `optimizer_d`)."""
        return {"optimizer": [p for p in model.parameters() if p.requires_grad]}

    def start_eval(self) -> None:
        """Called before each evaluation pass (e.g. to make its randomness repeatable)."""

    def test_metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Metrics of the whole test split that are not sums over batches (per class, ...)."""
        return {}

    def final_report(
        self, writer, model: nn.Module, data, outputs, step: int, run_dir: Path
    ) -> None:
        """TensorBoard extras and files at the end, from the test split's outputs."""
