"""Classification: cross-entropy over C logits, or one logit with BCE when there are two classes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlexp.data import DataMeta
from dlexp.errors import DlexpError
from dlexp.settings import NonNegativeInt
from dlexp.tasks.base import Task


class Classification(Task):
    monitor = "acc"

    def __init__(
        self, meta: DataMeta, loss: nn.Module | None = None, feature_maps: NonNegativeInt = 0
    ):
        if meta.num_classes == 1:
            raise DlexpError(
                f"data={meta.name} has one class ({(meta.class_names or ['?'])[0]!r}) in its target: a "
                "classifier needs two or more (check the target column, or data.classes)."
            )
        if meta.num_classes < 1:
            raise DlexpError(
                f"data={meta.name} has no classes, so it cannot be a classification task; "
                "use task=regression."
            )
        num_classes = meta.num_classes
        self.binary = num_classes == 2
        self.num_classes = num_classes
        self.class_names = meta.class_names
        self.num_outputs = 1 if self.binary else num_classes
        # A text scored at every step (data.source.every_step): targets (batch, steps), outputs
        # (batch, steps, classes); metrics are means over every position.
        self.steps = meta.num_targets if meta.num_targets > 1 else 0
        # The default losses (with data.balance=class_weight's weights) are computed per
        # sample, so that one definition serves a single run and a stacked group (outputs with
        # a leading job dimension); a `loss` config's module is called as it is.
        self.weights = torch.tensor(meta.class_weights) if meta.class_weights else None
        self.loss_fn = loss
        self._loss_device = torch.device("cpu")
        self.feature_maps = feature_maps

    @staticmethod
    def why_not_stacked(loss=None, **settings) -> str | None:
        return "a loss config is set" if loss else None

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        """Class indices (bools for one logit: False/True are classes 0/1)."""
        return out.squeeze(-1) > 0 if self.binary else out.argmax(-1)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean loss over the batch (the last dimension of y): BCE-with-logits for one
        logit, cross-entropy for more, class-weighted as torch weighs them."""
        if out.dim() != y.dim() + 1:
            raise DlexpError(
                f"the model's outputs {tuple(out.shape)} do not fit the targets "
                f"{tuple(y.shape)}: a text scored at every position (data.source.every_step=true) "
                "needs a read-out at every step (model.every_step=true), one scored after each "
                "window needs model.every_step=false; set the two alike (model=rnn|lstm|gru "
                "follow the data unless set)."
            )
        if self.loss_fn is not None:  # (as nn's losses take them; buffers on out's device)
            if out.device != self._loss_device:
                self.loss_fn.to(out.device)
                self._loss_device = out.device
            return (
                self.loss_fn(out.squeeze(-1), y.to(out.dtype))
                if self.binary
                else self.loss_fn(out.movedim(-1, 1) if self.steps else out, y)
            )
        w = self.weights
        if w is not None and w.device != out.device:
            self.weights = w = w.to(out.device)
        if self.binary:
            pos = None if w is None else w[1:] / w[0]
            each = F.binary_cross_entropy_with_logits(
                out.squeeze(-1), y.to(out.dtype), pos_weight=pos, reduction="none"
            )
            return (each.flatten(-2) if self.steps else each).mean(-1)
        logits = out.movedim(-1, 1) if out.dim() > 2 else out  # (jobs, C, batch)
        each = F.cross_entropy(logits, y, weight=w, reduction="none")
        if self.steps:  # one mean over every position
            each, y = each.flatten(-2), y.flatten(-2)
        if w is None:
            return each.mean(-1)
        return each.sum(-1) / w[y].sum(-1)  # torch's weighted mean

    def sums(self, out, y, loss, inputs) -> dict[str, torch.Tensor]:
        if out.requires_grad:  # (a detach costs as much as a small op: only where needed)
            out, loss = out.detach(), loss.detach()
        correct = self.predict(out) == y
        if self.steps:  # per window, the share of its positions right
            correct = correct.flatten(-2)
            return {
                "loss": loss.float() * y.shape[-2],
                "acc": correct.sum(-1, dtype=torch.float32) / self.steps,
            }
        return {"loss": loss.float() * y.shape[-1], "acc": correct.sum(-1, dtype=torch.float32)}

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        """(N, C) class probabilities (two columns for one logit)."""
        if self.binary:
            p = torch.sigmoid(out.float().squeeze(1))
            return torch.stack([1 - p, p], 1)
        return torch.softmax(out.float(), 1)

    def flat(self, outputs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs (N, C) and targets (N,): a text's every position as one sample."""
        return (outputs.flatten(0, -2), y.flatten()) if self.steps else (outputs, y)

    def test_metrics(self, outputs, targets) -> dict[str, float]:
        """Precision, recall and F1 per class with their macro and weighted means (and ROC-AUC
        for two classes), from the test split's outputs: scikit-learn's definitions (a class
        never predicted has precision 0), computed from the confusion matrix (scikit-learn's
        functions take ~10 ms each; a stacked sweep scores thousands of runs)."""
        outputs, targets = self.flat(outputs, targets)
        y, pred = targets.cpu().numpy(), self.predict(outputs).cpu().numpy()
        n = self.num_classes
        cm = np.bincount(y * n + pred, minlength=n * n).reshape(n, n).astype(float)
        tp, predicted, support = np.diag(cm), cm.sum(0), cm.sum(1)

        def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

        scores = {
            "precision": ratio(tp, predicted),
            "recall": ratio(tp, support),
            "f1": ratio(2 * tp, predicted + support),
        }
        names = [str(c).replace("/", "-") for c in (self.class_names or range(n))]
        out: dict[str, float] = {}
        for metric, values in scores.items():
            out.update({f"{metric}/{name}": v for name, v in zip(names, values, strict=True)})
        if (support > 0).sum() == 1:  # one class tested (data.held_out): what the net calls it
            out.update(
                {
                    f"called/{name}": v
                    for name, v in zip(names, predicted / support.sum(), strict=True)
                }
            )
        for metric, values in scores.items():
            out[f"{metric}_macro"] = values.mean()
            out[f"{metric}_weighted"] = ratio(np.array([values @ support]), support.sum())[0]
        if self.binary and support.all():  # the Mann-Whitney form of the area under ROC
            scores = self.probabilities(outputs)[:, 1].cpu().numpy()
            _, where, counts = np.unique(scores, return_inverse=True, return_counts=True)
            ranks = (np.cumsum(counts) - (counts - 1) / 2)[where]  # tied scores share a rank
            positive = y == 1
            n_pos, n_neg = positive.sum(), (~positive).sum()
            out["roc_auc"] = (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        return {k: float(v) for k, v in out.items()}

    def final_report(self, writer, model, data, outputs, step: int, run_dir) -> None:
        """The test set's confusion matrix (TensorBoard and confusion_matrix.png) and a
        precision-recall curve per class."""
        if self.feature_maps and hasattr(model, "feature_maps"):
            from dlexp.diagnostics import show_feature_maps

            show_feature_maps(writer, model, data, self.feature_maps, step, run_dir)
        if outputs is None:
            return
        if data.meta.series is not None and hasattr(model, "step"):
            self._text_report(writer, model, data, step, run_dir)
        outputs, y = self.flat(outputs, data.test.y)
        probs, y = self.probabilities(outputs).cpu(), y.cpu()
        for c, name in enumerate(self.class_names or range(self.num_classes)):
            tag = f"test/pr_curve/{str(name).replace('/', '-')}"
            writer.add_pr_curve(tag, (y == c).int(), probs[:, c], step)
        n = self.num_classes
        pairs = y * n + self.predict(outputs).cpu()
        cm = torch.bincount(pairs, minlength=n * n).view(n, n)
        import io

        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary

        image = Image.fromarray(confusion_image(cm, self.class_names))
        png = io.BytesIO()  # encoded once, for the file and for TensorBoard
        image.save(png, format="PNG", compress_level=1)
        (run_dir / "confusion_matrix.png").write_bytes(png.getvalue())
        encoded = Summary.Image(
            height=image.height,
            width=image.width,
            colorspace=3,
            encoded_image_string=png.getvalue(),
        )
        summary = Summary(value=[Summary.Value(tag="test/confusion_matrix", image=encoded)])
        writer.file_writer.add_summary(summary, step)

    def _text_report(self, writer, model, data, step: int, run_dir) -> None:
        """A text (data=text): 200 characters generated after its first character, as the
        notebook does (the most likely each time) and sampled at temperature 0.8, and the loss
        of guessing by character frequency (samples.txt, generation.json, TensorBoard)."""
        import json

        from dlexp.data.sequences import char_of
        from dlexp.generate import frequency_loss, generate_text

        prompt = char_of(self.class_names[int(data.meta.series[0])])
        greedy = generate_text(model, self.class_names, prompt, 200, 0.0)
        sampled = generate_text(model, self.class_names, prompt, 200, 0.8)
        (run_dir / "samples.txt").write_text(
            f"most likely:\n{greedy}\n\ntemperature 0.8:\n{sampled}\n", encoding="utf-8"
        )
        writer.add_text("test/samples", f"    {greedy}\n\n    {sampled}", step)
        baseline = {
            f"{split}_frequency_loss": frequency_loss(
                data.train.y, getattr(data, split).y, self.num_classes
            )
            for split in ("val", "test")
        }
        (run_dir / "generation.json").write_text(json.dumps(baseline, indent=1) + "\n")


_FIGURES: dict[tuple, tuple] = {}  # per class list: the figure and its drawn frame


def confusion_figure(cm: torch.Tensor, names: list[str]):
    """The confusion matrix's figure: rows true class, columns predicted; cells shaded by the
    share of their row, with the counts written in (the course's picture), full class names
    on both axes. One figure per class list and process, given each run's counts."""
    n = len(cm)
    labels = [str(s) for s in (names or range(n))]
    if (n, *labels) not in _FIGURES:
        _FIGURES[(n, *labels)] = _confusion_frame(n, labels)
    fig, _, image, title, counts = _FIGURES[(n, *labels)]
    share = (cm.float() / cm.sum(1, keepdim=True).clamp_min(1)).numpy()
    image.set_data(share)
    title.set_text(f"test confusion matrix ({int(cm.sum())} samples)")
    for (i, j), text in counts.items():
        text.set_text(str(int(cm[i, j])))
        text.set_color("white" if share[i, j] > 0.5 else "black")
    return fig


def confusion_image(cm: torch.Tensor, names: list[str]) -> np.ndarray:
    """The figure as an RGB array. Its frame (axes, labels) was drawn once; a run draws only
    its cells, counts and title on it (~2 ms instead of ~15: a stacked sweep draws thousands)."""
    fig = confusion_figure(cm, names)
    _, frame, image, title, counts = _FIGURES[
        (len(cm), *(str(s) for s in (names or range(len(cm)))))
    ]
    fig.canvas.restore_region(frame)
    for artist in (image, *image.axes.spines.values(), title, *counts.values()):
        fig.draw_artist(artist)  # (the spines again: the cells cover them)
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _confusion_frame(n: int, labels: list[str]) -> tuple:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    side = min(12.0, max(4.0, 2.5 + 0.45 * n))
    fig = Figure(figsize=(side, side), dpi=100)  # not pyplot's: nothing global to close
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(np.zeros((n, n)), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(n), labels, rotation=90 if n > 10 else 45, ha="center")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    title = ax.set_title("", fontsize=10)
    counts = {}
    if n <= 30:
        for i in range(n):
            for j in range(n):
                counts[i, j] = ax.text(j, i, "", ha="center", va="center", fontsize=8)
    # Margins for the longest class name (tight_layout would measure every label: ~15 ms).
    longest = max(map(len, labels))
    below = 0.08 * longest if n > 10 else 0.06 * longest  # x labels at 90 or 45 degrees
    fig.subplots_adjust(
        left=(0.55 + 0.08 * longest) / side,
        bottom=(0.55 + below) / side,
        right=1 - 0.15 / side,
        top=1 - 0.4 / side,
    )
    for artist in (image, title, *counts.values()):
        artist.set_animated(True)  # left out of the frame, drawn per run
    fig.canvas.draw()
    frame = fig.canvas.copy_from_bbox(fig.bbox)
    return fig, frame, image, title, counts
