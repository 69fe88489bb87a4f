"""Tabular and toy data sets: Iris (scikit-learn) and the course's generated toys."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

from dlexp.data.core import DataMeta, Raw, Split, tabular
from dlexp.errors import DlexpError


@tabular
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


@tabular
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


@tabular
def doughnuts(
    n_per_class: int = 200, radii: tuple[float, float] = (10.0, 15.0), seed: int = 0
) -> Raw:
    """The course's "qwerties' doughnuts" (DUDL_regular_dropout): two noisy rings of
    `n_per_class` points at angles linspace(0, 4 pi), the inner one blurred 3x along x, the
    outer 3x along y."""
    gen = torch.Generator().manual_seed(seed)
    th = torch.linspace(0, 4 * math.pi, n_per_class)

    def noise(scale: float) -> torch.Tensor:
        return scale * torch.randn(n_per_class, generator=gen)

    (r1, r2) = radii
    inner = torch.stack([r1 * th.cos() + noise(3), r1 * th.sin() + noise(1)], 1)
    outer = torch.stack([r2 * th.cos() + noise(1), r2 * th.sin() + noise(3)], 1)
    x = torch.cat([inner, outer])
    y = torch.arange(2).repeat_interleave(n_per_class)
    return Raw(Split(x, y), None, DataMeta("doughnuts", "tabular", (2,), 2, ["inner", "outer"]))


@tabular
def linear(n: int = 100, slope: float = 1.0, noise: float = 0.5, seed: int = 0) -> Raw:
    """The regression toy: x ~ N(0, 1), y = slope * x + noise * N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=gen)
    y = slope * x + noise * torch.randn(n, 1, generator=gen)
    return Raw(Split(x, y), None, DataMeta("regression", "tabular", (1,), 0))


WINE_CSV = Path(__file__).with_name("winequality-red.csv")  # CC BY 4.0: see its README.md


@tabular
def wine(target: str = "quality_binary", path: str | None = None, threshold: int = 5) -> Raw:
    """The course's red wine data (DUDL_metaparams_*): wines with total sulfur dioxide >= 200
    dropped (outliers), every feature z-scored over the whole set (as the course does), and
    the target: `quality_binary` (quality > `threshold`, 5: the course's label; another
    threshold makes the classes imbalanced, as the course's imbalance demo), `quality` (the score
    3..8 as classes) or a feature's name (a regression target, e.g. `residual sugar`, from the
    other features and the quality score)."""
    file = Path(path).expanduser() if path else WINE_CSV
    header, *rows = file.read_text().strip().splitlines()
    names = [n.strip('"') for n in header.split(";")]
    values = torch.tensor([[float(v) for v in row.split(";")] for row in rows])
    values = values[values[:, names.index("total sulfur dioxide")] < 200]
    quality = values[:, names.index("quality")]
    features = [n for n in names if n != "quality"]
    x = values[:, [names.index(n) for n in features]]
    x = (x - x.mean(0)) / x.std(0)  # (scipy's zscore uses ddof=0; 1,597 rows: no difference to see)
    if target == "quality_binary":
        names = [f"quality <= {threshold}", f"quality > {threshold}"]
        return Raw(Split(x, (quality > threshold).long()), None,
                   DataMeta("wine", "tabular", (x.shape[1],), 2, names))
    if target == "quality":
        scores = quality.long().unique()
        y = torch.searchsorted(scores, quality.long())
        return Raw(Split(x, y), None, DataMeta("wine", "tabular", (x.shape[1],), len(scores),
                                               [f"quality {int(s)}" for s in scores]))
    if target not in features:
        raise DlexpError(
            f"data.source.target={target!r} is not known; use quality_binary (the course's "
            f"label), quality (the score as classes) or a feature: {', '.join(features)}."
        )
    # A feature as the target: the other ten and the quality score (z-scored too) are the
    # inputs, as DUDL_metaparams_CodeChallenge_sugar predicts residual sugar.
    q = (quality - quality.mean()) / quality.std()
    keep = [i for i, n in enumerate(features) if n != target]
    x_in = torch.cat([x[:, keep], q.unsqueeze(1)], 1)
    y = x[:, features.index(target)].unsqueeze(1)
    return Raw(Split(x_in, y), None, DataMeta("wine", "tabular", (x_in.shape[1],), 0))
