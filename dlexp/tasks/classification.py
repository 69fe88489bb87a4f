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

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        """(N, C) class probabilities (two columns for one logit)."""
        if self.binary:
            p = torch.sigmoid(out.float().squeeze(1))
            return torch.stack([1 - p, p], 1)
        return torch.softmax(out.float(), 1)

    def test_metrics(self, outputs, targets) -> dict[str, float]:
        """Precision, recall and F1 per class with their macro and weighted means (and ROC-AUC
        for two classes), by scikit-learn, from the test split's outputs."""
        from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

        y, pred = targets.cpu().numpy(), self.predict(outputs).cpu().numpy()
        labels = list(range(self.num_classes))
        names = [str(n).replace("/", "-") for n in (self.class_names or labels)]
        out: dict[str, float] = {}
        per_class = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
        for metric, values in zip(("precision", "recall", "f1"), per_class[:3], strict=False):
            out.update(
                {f"{metric}/{name}": float(v) for name, v in zip(names, values, strict=True)}
            )
        for average in ("macro", "weighted"):
            p, r, f, _ = precision_recall_fscore_support(
                y, pred, labels=labels, average=average, zero_division=0
            )
            out.update({f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f})
        if self.binary and len(set(y.tolist())) == 2:
            out["roc_auc"] = float(roc_auc_score(y, self.probabilities(outputs)[:, 1].cpu()))
        return {k: float(v) for k, v in out.items()}

    def final_report(self, writer, model, data, outputs, step: int, run_dir) -> None:
        """The test set's confusion matrix (TensorBoard and confusion_matrix.png) and a
        precision-recall curve per class."""
        if outputs is None:
            return
        probs, y = self.probabilities(outputs).cpu(), data.test.y.cpu()
        for c, name in enumerate(self.class_names or range(self.num_classes)):
            tag = f"test/pr_curve/{str(name).replace('/', '-')}"
            writer.add_pr_curve(tag, (y == c).int(), probs[:, c], step)
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
