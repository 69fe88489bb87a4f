"""Sequences (the course's RNN section): a series or a text cut into windows of `seq_length`
items, each labelled with the item that follows it (many-to-one), or a text's windows labelled
with the character after each position (`every_step`: the window shifted by one, as
DUDL_RNN_loremipsum trains).

A window's x is (seq_length, 1) floats for a series and (seq_length,) character indices for a
text; y is the next value (regression), the next character or the (seq_length,) next
characters (classification over the text's characters). The windows stay in time order;
`data.ordered: true` makes the held-out splits the last windows. The whole series is kept in
the metadata (`DataMeta.series`), for generation.
"""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path

import torch

from dlexp.data.core import DataMeta, Raw, Split
from dlexp.errors import DlexpError

LOREM = Path(__file__).with_name("lorem_ipsum.txt")  # DUDL_RNN_loremipsum's text


def char_name(c: str) -> str:
    """A character as a class name: itself, or its Unicode name for spaces and punctuation
    ("space", "comma"), which metric tags and file names can hold."""
    return c if c.isalnum() else unicodedata.name(c, f"u+{ord(c):04x}").lower()


def char_of(name: str) -> str:
    if len(name) == 1:
        return name
    if name.startswith("u+"):
        return chr(int(name[2:], 16))
    return unicodedata.lookup(name)


def windows(series: torch.Tensor, seq_length: int, name: str) -> Split:
    """Every window of `seq_length` items of `series` and the item after it."""
    if not 1 <= seq_length < len(series):
        raise DlexpError(
            f"data.source.seq_length={seq_length} does not fit a sequence of {len(series)} items: "
            f"use 1 to {len(series) - 1} (data={name})."
        )
    x = series.unfold(0, seq_length, 1)[:-1]  # (windows, seq_length), views of the series
    y = series[seq_length:]
    return Split(x.contiguous(), y.contiguous())


def _series(name: str, values: torch.Tensor, seq_length: int) -> Raw:
    w = windows(values, seq_length, name)
    split = Split(w.x.unsqueeze(-1), w.y.unsqueeze(-1))  # one feature per step
    return Raw(split, None, DataMeta(name, "sequence", (seq_length, 1), 0, series=values))


def alternating(n: int = 50, seq_length: int = 9, pattern: str = "+-", seed: int = 0) -> Raw:
    """DUDL_RNN_altSequences: n values U(0, 1), their signs following `pattern` ("+-":
    alternating; the notebook's challenge tries "++-", "++--", ...; "random": random signs)."""
    if pattern != "random" and (not pattern or set(pattern) - {"+", "-"}):
        raise DlexpError(
            f"data.source.pattern={pattern!r}: give a pattern of + and - (e.g. +-, ++-, ++--) "
            "or random."
        )
    gen = torch.Generator().manual_seed(seed)
    values = torch.rand(n, generator=gen)
    if pattern == "random":
        signs = torch.randint(0, 2, (n,), generator=gen) * 2 - 1
    else:
        signs = torch.tensor([1 if s == "+" else -1 for s in pattern]).repeat(n // len(pattern) + 1)
    return _series("alternating", values * signs[:n], seq_length)


def sine(
    n: int = 500,
    cycles: float = 15.0,
    seq_length: int = 30,
    warp: str = "cos",
    noise: float = 0.0,
    seed: int = 0,
) -> Raw:
    """DUDL_RNN_codeChallenge_SineExtrapolate: sin(t + cos(t)) at n points over t in [0, 2 pi
    cycles] (the notebook's 0..30 pi; its test cases: cycles=5, or warp=sin for sin(t + sin(t));
    warp=none for a pure sine), plus Gaussian noise of std `noise` (dlexp's noisy variant)."""
    warps = {"cos": torch.cos, "sin": torch.sin, "none": torch.zeros_like}
    if warp not in warps:
        raise DlexpError(f"data.source.warp={warp!r}: use cos, sin or none.")
    t = torch.linspace(0, 2 * math.pi * cycles, n)
    values = torch.sin(t + warps[warp](t))
    if noise:
        values = values + noise * torch.randn(n, generator=torch.Generator().manual_seed(seed))
    return _series("sine", values, seq_length)


def text(
    path: str | None = None, seq_length: int = 80, lower: bool = True, every_step: bool = True
) -> Raw:
    """A text file's characters (default: the course's lorem ipsum), each window of
    `seq_length` characters labelled with the character after each of its positions
    (`every_step`: targets (seq_length,), `num_targets` of them) or after its last one;
    classes are the text's characters in sorted order."""
    file = Path(path).expanduser() if path else LOREM
    if not file.is_file():
        raise DlexpError(
            f"data.source.path={path}: no such text file; give a plain-text file (UTF-8), or "
            "leave the key unset for the course's lorem ipsum."
        )
    content = " ".join(file.read_text(encoding="utf-8").split())  # one line, single spaces
    if lower:
        content = content.lower()
    chars = sorted(set(content))
    index = {c: i for i, c in enumerate(chars)}
    series = torch.tensor([index[c] for c in content], dtype=torch.long)
    split = windows(series, seq_length, "text")
    if every_step:
        split = Split(split.x, series.unfold(0, seq_length, 1)[1:].contiguous())
    names = [char_name(c) for c in chars]  # "space", "comma": usable in metric tags
    meta = DataMeta("text", "sequence", (seq_length,), len(chars), names, series=series)
    meta.num_targets = seq_length if every_step else 1
    return Raw(split, None, meta)
