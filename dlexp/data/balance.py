"""`data.balance`: correct an imbalanced training split (the validation and test splits are
never touched). oversample and undersample draw whole samples (seeded); smote synthesises
minority samples with imbalanced-learn's SMOTE (tabular data); class_weight leaves the data
and weights the loss by n / (classes x class count), as scikit-learn's "balanced"."""

from __future__ import annotations

import torch

from dlexp.data.core import DataMeta, Split
from dlexp.errors import DlexpError

CHOICES = ("none", "oversample", "undersample", "smote", "class_weight")


def rebalance(train: Split, meta: DataMeta, how: str, seed: int) -> Split:
    if how not in CHOICES:
        raise DlexpError(f"data.balance={how!r} is not known; use {', '.join(CHOICES)}.")
    if how == "none":
        return train
    if meta.num_classes < 2:
        raise DlexpError(f"data.balance={how} needs classes; data={meta.name} has none.")
    counts = torch.bincount(train.y, minlength=meta.num_classes)
    if how == "class_weight":
        weights = len(train) / (meta.num_classes * counts.clamp_min(1).double())
        meta.class_weights = tuple(weights.tolist())
        return train
    if how == "smote":
        return _smote(train, meta, seed)
    gen = torch.Generator().manual_seed(seed + 2)
    present = [c for c in range(meta.num_classes) if counts[c] > 0]
    target = int(counts.max() if how == "oversample" else counts[present].min())
    keep = []
    for c in present:
        idx = torch.nonzero(train.y == c).flatten()
        if how == "oversample":  # all of them, and random repeats up to the largest class
            extra = idx[torch.randint(len(idx), (target - len(idx),), generator=gen)]
            keep += [idx, extra]
        else:  # a random subset the size of the smallest class
            keep.append(idx[torch.randperm(len(idx), generator=gen)[:target]])
    return train.take(torch.cat(keep))


def _smote(train: Split, meta: DataMeta, seed: int) -> Split:
    if meta.kind != "tabular":
        raise DlexpError(
            f"data.balance=smote synthesises feature vectors; data={meta.name} holds images. "
            "Use data.balance=oversample or class_weight."
        )
    try:
        from imblearn.over_sampling import SMOTE
    except ImportError as err:
        raise DlexpError(
            "data.balance=smote needs imbalanced-learn, which dlexp installs as an extra: "
            "pip install 'dlexp[imbalance]' (or, in a clone: pip install -e '.[imbalance]')."
        ) from err
    smallest = int(torch.bincount(train.y).min())
    try:
        x, y = SMOTE(random_state=seed % 2**32, k_neighbors=min(5, smallest - 1)).fit_resample(
            train.x.numpy(), train.y.numpy()
        )
    except ValueError as err:
        raise DlexpError(f"data.balance=smote cannot resample this training split: {err}") from err
    return Split(torch.as_tensor(x, dtype=train.x.dtype), torch.as_tensor(y, dtype=train.y.dtype))
