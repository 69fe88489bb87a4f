"""Tabular and toy data sets: Iris (scikit-learn) and the course's generated toys."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from dlexp.data.core import DataMeta, Raw, Split
from dlexp.errors import DlexpError


def iris() -> Raw:
    """Fisher's iris, read from the CSV that scikit-learn ships (without importing sklearn,
    which would add over a second to every run's start-up)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DlexpError("data=iris needs scikit-learn installed (pip install scikit-learn).")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "iris.csv"
    header, *rows = path.read_text().split()
    names = header.split(",")[2:]
    values = torch.tensor([[float(v) for v in row.split(",")] for row in rows])
    x, y = values[:, :4].contiguous(), values[:, 4].long()
    return Raw(Split(x, y), None, DataMeta("iris", "tabular", (4,), 3, names))


def qwerties(
    centers: list[list[float]], spread: float = 1.0, n_per_class: int = 100, seed: int = 0
) -> Raw:
    """Gaussian blobs of `n_per_class` points around each centre, labelled 0, 1, ..."""
    if len(centers) < 2:
        raise DlexpError(
            f"data.source.centers has {len(centers)} centre(s); qwerties needs at least two "
            "(e.g. data.source.centers='[[1,1],[5,1]]')."
        )
    gen = torch.Generator().manual_seed(seed)
    c = torch.tensor(centers, dtype=torch.float32)
    x = c.repeat_interleave(n_per_class, 0)
    x = x + spread * torch.randn(x.shape, generator=gen)
    y = torch.arange(len(centers)).repeat_interleave(n_per_class)
    names = [f"blob{i}" for i in range(len(centers))]
    return Raw(Split(x, y), None, DataMeta("qwerties", "tabular", (c.shape[1],), len(centers), names))


def linear(n: int = 100, slope: float = 1.0, noise: float = 0.5, seed: int = 0) -> Raw:
    """The regression toy: x ~ N(0, 1), y = slope * x + noise * N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=gen)
    y = slope * x + noise * torch.randn(n, 1, generator=gen)
    return Raw(Split(x, y), None, DataMeta("regression", "tabular", (1,), 0))
