"""Classification's test metrics (computed from the confusion matrix, for speed) held to
scikit-learn's functions on the same outputs: absent classes, a class never predicted, and
tied scores."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from dlexp.data import DataMeta
from dlexp.tasks.classification import Classification


def task(n: int) -> Classification:
    return Classification(DataMeta("fake", "tabular", (2,), n, [f"c{i}" for i in range(n)]))


def sklearn_scores(y, pred, n: int) -> dict[str, float]:
    """scikit-learn's per-class and averaged precision, recall and F1 over all n classes (a
    class with no sample and no prediction counts 0, as zero_division=0 says)."""
    labels = list(range(n))
    out = {}
    for metric, i in (("precision", 0), ("recall", 1), ("f1", 2)):
        each = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)[i]
        out.update({f"{metric}/c{c}": float(v) for c, v in enumerate(each)})
        for average in ("macro", "weighted"):
            value = precision_recall_fscore_support(
                y, pred, labels=labels, average=average, zero_division=0
            )[i]
            out[f"{metric}_{average}"] = float(value)
    return out


@pytest.mark.parametrize(
    ("n", "targets", "predicted"),
    [
        (4, [0, 0, 1, 1, 2, 2, 2, 0], [0, 1, 1, 1, 2, 0, 2, 0]),  # class 3: absent, never predicted
        (3, [0, 1, 2, 0, 1, 2, 0, 1], [0, 0, 0, 0, 1, 1, 1, 1]),  # class 2 never predicted
        (3, [2, 2, 2, 2], [2, 2, 2, 2]),  # only one class present
    ],
)
def test_per_class_and_averaged_metrics_equal_scikit_learns(n, targets, predicted):
    out = torch.nn.functional.one_hot(torch.tensor(predicted), n).float() * 3 - 1  # logits
    y = torch.tensor(targets)
    ours = task(n).test_metrics(out, y)
    theirs = sklearn_scores(targets, predicted, n)
    called = {k: v for k, v in ours.items() if k.startswith("called/")}
    if len(set(targets)) == 1:  # one class tested (data.held_out): what it is called
        counts = torch.bincount(torch.tensor(predicted), minlength=n) / len(predicted)
        assert called == {f"called/c{c}": pytest.approx(float(v)) for c, v in enumerate(counts)}
    else:
        assert not called
    assert {k for k in ours if k != "roc_auc" and k not in called} == set(theirs)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key


def test_binary_roc_auc_equals_scikit_learns_with_tied_scores():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randint(-2, 3, (60, 1), generator=gen).float()  # five distinct scores: ties
    y = torch.randint(0, 2, (60,), generator=gen)
    ours = task(2).test_metrics(logits, y)
    probs = torch.sigmoid(logits.squeeze(1)).numpy()
    assert ours["roc_auc"] == pytest.approx(roc_auc_score(y.numpy(), probs), abs=1e-12)
    predicted = (logits.squeeze(1) > 0).long().tolist()
    for key, value in sklearn_scores(y.tolist(), predicted, 2).items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key


def test_roc_auc_is_left_out_when_a_class_is_absent():
    assert "roc_auc" not in task(2).test_metrics(torch.ones(5, 1), torch.ones(5, dtype=torch.long))
