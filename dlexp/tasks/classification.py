"""Classification: cross-entropy over C logits, or one logit with BCE when there are two classes."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dlexp.data import DataMeta
from dlexp.errors import DlexpError
from dlexp.tasks.base import Task


class Classification(Task):
    monitor = "acc"

    def __init__(self, meta: DataMeta, loss: nn.Module | None = None):
        if meta.num_classes < 2:
            raise DlexpError(
                f"data={meta.name} has no classes, so it cannot be a classification task; "
                "use task=regression."
            )
        num_classes = meta.num_classes
        self.binary = num_classes == 2
        self.num_classes = num_classes
        self.class_names = meta.class_names
        self.num_outputs = 1 if self.binary else num_classes
        self.loss_fn = loss or (nn.BCEWithLogitsLoss() if self.binary else nn.CrossEntropyLoss())

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        return (out.squeeze(1) > 0).long() if self.binary else out.argmax(1)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return self.loss_fn(out.squeeze(1), y.to(out.dtype))
        return self.loss_fn(out, y)

    def sums(self, out, y, loss, inputs) -> dict[str, torch.Tensor]:
        return {
            "loss": loss.detach().float() * len(y),
            "acc": (self.predict(out.detach()) == y).sum().float(),
        }

    def final_report(self, writer, model, data, outputs, step: int, run_dir) -> None:
        """The test set's confusion matrix: in TensorBoard and as confusion_matrix.png."""
        if outputs is None:
            return
        n = self.num_classes
        pairs = data.test.y.cpu() * n + self.predict(outputs).cpu()
        cm = torch.bincount(pairs, minlength=n * n).view(n, n)
        import matplotlib.pyplot as plt
        from PIL import Image

        fig = confusion_figure(cm, self.class_names)
        fig.canvas.draw()  # rendered once, for the PNG and for TensorBoard
        image = np.asarray(fig.canvas.buffer_rgba())[..., :3]
        plt.close(fig)
        Image.fromarray(image).save(run_dir / "confusion_matrix.png")
        writer.add_image("test/confusion_matrix", image, step, dataformats="HWC")


def confusion_figure(cm: torch.Tensor, names: list[str]):
    """Rows: true class, columns: predicted; cells shaded by the share of their row, with the
    counts written in (the course's picture), full class names on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(cm)
    labels = [str(s) for s in (names or range(n))]
    side = min(12.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side), dpi=100)
    share = (cm.float() / cm.sum(1, keepdim=True).clamp_min(1)).numpy()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=90 if n > 10 else 45, ha="center")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"test confusion matrix ({int(cm.sum())} samples)")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                color = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    return fig
