"""Your own data: a CSV table (`data=csv`) or a folder of images in torchvision's ImageFolder
layout (`data=image_folder`), split, scaled and checked like the built-in sets."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from dlexp.data.core import DataMeta, Raw, Split, tabular
from dlexp.errors import DlexpError
from dlexp.settings import Range, Test


@tabular
def csv_table(
    path: str, target: str, drop: list[str] = (), delimiter: str | None = None
) -> Raw:
    """Numeric feature columns and one `target` column: classes (text, or whole numbers) or,
    for a target with fractional values, a regression target (then use task=regression)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DlexpError(
            f"data.source.path={path}: no such file. Give the path of a CSV file whose first "
            "row names the columns."
        )
    text = file.read_text(encoding="utf-8-sig")
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:4096], delimiters=",;\t").delimiter
        except csv.Error:
            delimiter = ","
    lines = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r]
    if len(lines) < 2:
        what = "is empty" if not lines else "holds a header row but no data rows"
        raise DlexpError(
            f"{file} {what}: dlexp reads a CSV file whose first row names the columns and each "
            "further row is one sample."
        )
    header, *rows = lines
    header = [h.strip() for h in header]
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise DlexpError(
            f"{file}: the header names {', '.join(map(repr, twice))} more than once, so a column "
            "could not be told from another; give every column its own name."
        )
    if target not in header:
        raise DlexpError(
            f"data.source.target={target!r} is not a column of {file}; its columns are "
            f"{', '.join(header)}."
        )
    missing = [c for c in drop if c not in header]
    if missing:
        raise DlexpError(f"data.source.drop names {', '.join(missing)}, not columns of {file}.")
    features = [c for c in header if c != target and c not in drop]
    columns = [header.index(c) for c in features]
    x = np.empty((len(rows), len(features)), dtype=np.float32)
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise DlexpError(
                f"{file}, line {i + 2}: {len(row)} values for {len(header)} columns; every row "
                "needs one value per column."
            )
        for j, col in enumerate(columns):
            try:
                with np.errstate(over="ignore"):  # (beyond float32: inf, refused below)
                    x[i, j] = float(row[col])
            except ValueError:
                raise DlexpError(
                    f"{file}, line {i + 2}, column {features[j]!r}: {row[col]!r} is not a number. "
                    "dlexp reads numeric features: drop the column "
                    f"(data.source.drop=[{features[j]}]) or encode it as numbers."
                ) from None
            if not np.isfinite(x[i, j]):
                raise DlexpError(
                    f"{file}, line {i + 2}, column {features[j]!r}: {row[col].strip()!r} is not a "
                    "finite number a float32 holds (NaN, infinite, or beyond 3.4e38): fill or "
                    "drop the row, or the column (data.source.drop=[...])."
                )
    values = [row[header.index(target)].strip() for row in rows]
    for i, value in enumerate(values):
        if value == "" or value.lower() in ("nan", "inf", "-inf", "infinity"):
            raise DlexpError(
                f"{file}, line {i + 2}: the target column {target!r} is {value!r}; every row "
                "needs a class or a finite number there (fill or drop the row)."
            )
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        numbers = None
    bad = next((i for i, n in enumerate(numbers or []) if not np.isfinite(n)), None)
    if bad is not None:
        raise DlexpError(
            f"{file}, line {bad + 2}: the target column {target!r} is {values[bad]!r}, beyond "
            "a finite number; fill or drop the row."
        )
    meta_args = ("csv", "tabular", (len(features),))
    if numbers is not None and any(n != int(n) for n in numbers):  # a quantity: regression
        y = torch.tensor(numbers, dtype=torch.float32).unsqueeze(1)
        return Raw(Split(torch.from_numpy(x), y), None, DataMeta(*meta_args, 0))
    names = sorted(set(values), key=(lambda v: float(v)) if numbers is not None else None)
    index = {name: k for k, name in enumerate(names)}
    y = torch.tensor([index[v] for v in values])
    return Raw(Split(torch.from_numpy(x), y), None, DataMeta(*meta_args, len(names), names))


def image_folder(
    path: str,
    size: Annotated[int, Range(1, says="a size in pixels >= 1")] = 64,
    channels: Annotated[int, Test(lambda v: v in (1, 3), "1 (grey) or 3 (colour)")] = 3,
) -> Raw:
    """<path>/<class name>/<images>: every image resized to size x size, as uint8."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(path).expanduser()
    if not root.is_dir():
        raise DlexpError(
            f"data.source.path={path}: no such folder. Give a folder with one sub-folder of "
            "images per class (<path>/<class>/<image>.png), torchvision's ImageFolder layout."
        )
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise DlexpError(
            f"{root} has {len(classes)} class folder(s); it needs one sub-folder of images per "
            "class, at least two (<path>/<class>/<image>.png)."
        )
    mode = {1: "L", 3: "RGB"}[channels]
    images, labels = [], []
    for k, name in enumerate(classes):
        files = sorted(f for f in (root / name).rglob("*") if f.suffix.lower() in IMG_EXTENSIONS)
        if not files:
            raise DlexpError(
                f"{root / name} holds no images ({', '.join(IMG_EXTENSIONS[:4])}, ...); every "
                "class folder needs at least one, or remove the folder."
            )
        for file in files:
            try:
                with Image.open(file) as im:
                    pixels = im.convert(mode).resize((size, size), Image.BILINEAR)
            except Image.DecompressionBombError as err:  # (pillow's limit: ~179 megapixels)
                raise DlexpError(
                    f"{file} is larger than dlexp decodes ({err}); shrink it or remove it."
                ) from None
            except (OSError, UnidentifiedImageError, ValueError) as err:
                raise DlexpError(
                    f"{file} is not a readable image ({err}); remove or replace it."
                ) from None
            images.append(np.asarray(pixels))
            labels.append(k)
    x = torch.from_numpy(np.stack(images))
    x = x.unsqueeze(1) if channels == 1 else x.permute(0, 3, 1, 2)
    meta = DataMeta("image_folder", "image", (channels, size, size), len(classes), classes)
    return Raw(Split(x.contiguous(), torch.tensor(labels)), None, meta)


def source_files(source) -> list[Path]:
    """The files a `path` source reads (for the decoded-data cache's key)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    path = Path(str(source.get("path"))).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(f for f in path.rglob("*") if f.suffix.lower() in IMG_EXTENSIONS)
    return []
