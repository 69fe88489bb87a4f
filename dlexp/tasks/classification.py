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
        """A confusion-matrix image of the test set in TensorBoard."""
        if outputs is None:
            return
        n = self.num_classes
        pairs = data.test.y.cpu() * n + self.predict(outputs).cpu()
        cm = torch.bincount(pairs, minlength=n * n).view(n, n)
        writer.add_image("test/confusion_matrix", confusion_image(cm, self.class_names), step)


def confusion_image(cm: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Draw a confusion matrix (rows: true class, columns: predicted) as a CHW uint8 image."""
    from PIL import Image, ImageDraw, ImageFont

    n = len(cm)
    cell = max(12, min(40, 600 // n))
    font = ImageFont.load_default(max(8, cell // 3))
    labels = [str(s)[:12] for s in (names or range(n))]
    margin = 8 + max(int(font.getlength(s)) for s in labels)
    size = margin + n * cell + 4
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    rows = cm.float() / cm.sum(1, keepdim=True).clamp_min(1)  # colour by row share
    for i in range(n):
        draw.text((4, margin + i * cell + cell // 3), labels[i], fill="black", font=font)
        draw.text(
            (margin + i * cell + 2, 4), labels[i][: max(1, cell // 7)], fill="black", font=font
        )
        for j in range(n):
            shade = int(255 * (1 - 0.8 * rows[i, j].item()))
            box = (
                margin + j * cell,
                margin + i * cell,
                margin + (j + 1) * cell - 1,
                margin + (i + 1) * cell - 1,
            )
            draw.rectangle(box, fill=(shade, shade, 255))
            if cell >= 20:
                text_fill = "white" if shade < 128 else "black"
                draw.text(
                    (box[0] + 3, box[1] + cell // 3), str(int(cm[i, j])), fill=text_fill, font=font
                )
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)
