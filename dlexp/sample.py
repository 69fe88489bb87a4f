"""`sample(run)`: what a trained generative run makes: images from a GAN's generator (one PNG
grid), a series continued past its training data (a plot, and its numbers), or text from a
character model (printed and saved)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from dlexp.build import load_run
from dlexp.errors import DlexpError

log = logging.getLogger("dlexp")


def sample(
    run: str | Path,
    n: int | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    prompt: str | None = None,
    temperature: float = 1.0,
) -> Path:
    """From the run's last checkpoint: `n` images (default 64, drawn with `seed`) into the PNG
    grid `out` (samples.png); for a series, `n` values continued free-running from where its
    test split starts (default: as many as that split) plotted into `out` (extrapolation.png);
    for a text, `n` characters (default 200) after `prompt` (default: the text's first
    character) at `temperature` (0: the most likely each time) printed and written to `out`
    (samples.txt)."""
    loaded = load_run(run)
    model = loaded.model.eval()
    if loaded.meta.kind == "sequence" and hasattr(model, "step"):
        if loaded.meta.num_classes:
            return _text(loaded, n or 200, Path(out or "samples.txt"), seed, prompt, temperature)
        return _series(loaded, n, Path(out or "extrapolation.png"))
    if not hasattr(model, "sample"):
        raise DlexpError(
            f"{loaded.path} is not a GAN or sequence run; `dlexp sample` needs a run of "
            "model=gan or model=dcgan, or of model=rnn|lstm|gru on data=sine, alternating or text."
        )
    from torchvision.utils import save_image

    n, out = n or 64, Path(out or "samples.png")
    with torch.inference_mode():
        images = (model.sample(n, torch.Generator().manual_seed(seed)) + 1) / 2
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.clamp(0, 1), out, nrow=math.ceil(math.sqrt(n)), pad_value=1.0)
    epoch = loaded.state["loop"]["epoch"]
    log.info(f"{n} samples from {loaded.path} (epoch {epoch}) written to {out}")
    return out


def _series(loaded, n: int | None, out: Path) -> Path:
    from dlexp.data.load import load_data
    from dlexp.generate import extrapolate, extrapolation_figure

    data = load_data(loaded.cfg.data, loaded.cfg.seed)  # the same series, rebuilt
    result = extrapolate(loaded.model, data, n)
    out.parent.mkdir(parents=True, exist_ok=True)
    extrapolation_figure(result, loaded.meta.name).savefig(out)
    numbers = {k: round(v, 6) for k, v in result.items() if k.endswith("_mse")}
    out.with_suffix(".json").write_text(
        json.dumps({**numbers, "free_run": result["free_run"]}, indent=1) + "\n"
    )
    log.info(
        f"{len(result['free_run'])} values continued from step {result['start']} of "
        f"{loaded.meta.name}: "
        + "  ".join(f"{k} {v:.4f}" for k, v in numbers.items())
        + f"\nplot written to {out} (values: {out.with_suffix('.json')})"
    )
    return out


def _text(loaded, n: int, out: Path, seed: int, prompt: str | None, temperature: float) -> Path:
    from dlexp.data.sequences import char_of
    from dlexp.generate import generate_text

    names = loaded.meta.class_names
    text = generate_text(
        loaded.model,
        names,
        prompt or char_of(names[int(loaded.meta.series[0])]),
        n,
        temperature,
        seed,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n", encoding="utf-8")
    log.info(f"{text}\n({n} characters at temperature {temperature}, written to {out})")
    return out
