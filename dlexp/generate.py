"""Generation from a trained recurrent net (the course's RNN section): a series continued past
what it was trained on, one value at a time from its own predictions, and text sampled one
character at a time from a prompt; with the baselines that say whether the net learned
(repeating the last value; the training text's character frequencies)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from dlexp.data.core import Data
from dlexp.data.sequences import char_of
from dlexp.errors import DlexpError


@torch.no_grad()
def extrapolate(model: nn.Module, data: Data, steps: int | None = None) -> dict:
    """The series' future (where the test windows start) predicted two ways: one step ahead
    from the true past (the test split's predictions) and free-running, each value from the
    net's own previous predictions (the notebook's extrapolation), for `steps` values (default:
    as many as the test split holds), with the mean squared errors of each and of the
    baseline that repeats the last known value."""
    series = data.meta.series.float().cpu()
    length = data.meta.input_shape[0]
    start = len(series) - len(data.test)  # the first value a test window predicts
    steps = steps or len(data.test)
    device = next(model.parameters()).device
    model.eval()
    windows = series.unfold(0, length, 1)[start - length : -1].unsqueeze(-1)
    one_step = model(windows.to(device)).float().flatten().cpu()
    free = []
    out, state = model.step(series[start - length : start].view(1, length, 1).to(device), None)
    for _ in range(steps):
        free.append(out.item())
        out, state = model.step(out.view(1, 1, 1), state)
    truth = series[start : start + steps]
    known = len(truth)
    free_t = torch.tensor(free)
    mse = lambda a, b: float(((a - b) ** 2).mean()) if len(b) else math.nan  # noqa: E731
    return {
        "start": start,
        "series": series.tolist(),
        "one_step": one_step.tolist(),
        "free_run": free,
        "test_mse": mse(one_step, series[start:]),
        "last_value_mse": mse(series[start - 1 : -1], series[start:]),
        "free_run_mse": mse(free_t[:known], truth),
        "hold_last_mse": mse(series[start - 1].expand(known), truth),
    }


def extrapolation_figure(result: dict, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start, series = result["start"], result["series"]
    fig, ax = plt.subplots(figsize=(10, 3.5), dpi=100)
    ax.plot(series, "k.-", lw=0.8, ms=2, label="data")
    ax.axvline(start - 0.5, color="0.6", ls="--", lw=0.8)
    one = range(start, start + len(result["one_step"]))
    ax.plot(one, result["one_step"], "b.-", lw=0.8, ms=2, label="one step ahead (test)")
    free = range(start, start + len(result["free_run"]))
    ax.plot(free, result["free_run"], "r.-", lw=0.8, ms=2, label="free-running")
    ax.set_xlabel("time step")
    ax.set_title(
        f"{title}: test MSE {result['test_mse']:.4f} (last value: {result['last_value_mse']:.4f}),"
        f" free-running {result['free_run_mse']:.4f} (holding the last: {result['hold_last_mse']:.4f})",
        fontsize=8,
    )
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


@torch.no_grad()
def generate_text(
    model: nn.Module,
    names: list[str],
    prompt: str,
    n: int = 200,
    temperature: float = 0.0,
    seed: int = 0,
) -> str:
    """`prompt` and `n` characters after it, each drawn from the net's softmax at
    `temperature` (0: the most likely one, as the notebook does)."""
    chars = [char_of(name) for name in names]
    index = {c: i for i, c in enumerate(chars)}
    unknown = sorted({c for c in prompt if c not in index})
    if not prompt or unknown:
        raise DlexpError(
            f"prompt={prompt!r}: "
            + (f"the characters {unknown} are not in the training text; " if unknown else "")
            + f"use characters of the text ({''.join(chars)!r})."
        )
    if temperature < 0:
        raise DlexpError(f"temperature={temperature} must be >= 0 (0: the most likely character).")
    device = next(model.parameters()).device
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out, state = model.step(torch.tensor([[index[c] for c in prompt]], device=device), None)
    text = prompt
    for _ in range(n):
        if temperature == 0:
            nxt = int(out.argmax())
        else:
            probs = torch.softmax(out[0].float().cpu() / temperature, -1)
            nxt = int(torch.multinomial(probs, 1, generator=gen))
        text += chars[nxt]
        out, state = model.step(torch.tensor([[nxt]], device=device), state)
    return text


def frequency_loss(train_y: torch.Tensor, y: torch.Tensor, classes: int) -> float:
    """The cross-entropy of predicting every character by its frequency in the training text
    (add-one smoothed): the loss a net that learned nothing of the order would reach."""
    counts = np.bincount(train_y.cpu().numpy().ravel(), minlength=classes) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[y.cpu().numpy()].mean()) if len(y) else math.nan
