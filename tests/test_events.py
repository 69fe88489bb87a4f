"""dlexp's event writer (dlexp.events: SummaryWriter's API without its writer thread, records
buffered and checksummed by google-crc32c, scalars encoded directly) against torch's own
SummaryWriter: the same records written by both, read back by TensorBoard's EventAccumulator,
are the same."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from dlexp.events import EventWriter, scalars_events
from dlexp.record import layout, write_hparams

SCALARS = {"train/loss": 0.6931, "val/acc": 0.5, "lr": 1e-3, "big": 1e300}  # (big: inf in fp32)


def records(writer, fast: bool) -> None:
    """The kinds of record a run writes; `fast`: scalars through dlexp's own encoders."""
    gen = torch.Generator().manual_seed(0)
    for step in (1, 2):
        if fast and step == 1:
            writer.scalars(SCALARS, step)  # one event, packed by a cached struct
        elif fast:  # a stacked group's encoding of one job's row
            values = np.array([list(SCALARS.values())] * 3, dtype=np.float64)
            with np.errstate(over="ignore"):
                rows = values.astype(np.float32)
            writer.raw(scalars_events(list(SCALARS), rows, step, time.time())[1])
        else:
            for tag, value in SCALARS.items():
                writer.add_scalar(tag, value, step)
    writer.add_image("samples", torch.rand(3, 8, 8, generator=gen), 3)
    writer.add_histogram("weights/w", torch.randn(200, generator=gen), 4)
    writer.add_text("note", "hello", 5)
    labels, scores = torch.randint(0, 2, (50,), generator=gen), torch.rand(50, generator=gen)
    writer.add_pr_curve("test/pr_curve/a", labels, scores, 6)
    layout(writer, {"train/loss": 1.0, "val/loss": 1.0, "test/loss": 1.0})
    write_hparams(writer, {"optimizer.lr": 0.1, "optimizer": "sgd"}, {"val/acc": 0.5, "x": 1})
    writer.close()


def read(folder: Path) -> dict:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    out = {"tags": {k: sorted(v) for k, v in tags.items() if isinstance(v, list)}}
    out["scalars"] = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    out["images"] = {
        t: [(e.step, e.encoded_image_string, e.width, e.height) for e in acc.Images(t)]
        for t in tags["images"]
    }
    out["histograms"] = {
        t: [(e.step, e.histogram_value) for e in acc.Histograms(t)] for t in tags["histograms"]
    }
    out["tensors"] = {
        t: [(e.step, e.tensor_proto.SerializeToString()) for e in acc.Tensors(t)]
        for t in tags["tensors"]
    }
    out["plugins"] = {}
    for plugin in ("hparams", "custom_scalars", "text", "pr_curves"):
        with contextlib.suppress(KeyError):  # (none of its records in this folder)
            out["plugins"][plugin] = acc.PluginTagToContent(plugin)
    return out


def test_dlexps_event_files_read_back_as_summary_writers_do(tmp_path):
    records(SummaryWriter(str(tmp_path / "torch")), fast=False)
    for fast in (False, True):
        folder = tmp_path / f"dlexp-{fast}"
        records(EventWriter(str(folder)), fast)
        ours, theirs = read(folder), read(tmp_path / "torch")
        assert ours == theirs
    assert theirs["scalars"]["big"][0][1] == float("inf")
    assert len(theirs["plugins"]["hparams"]) == 2 and theirs["images"]["samples"]


def test_a_resumed_writer_drops_what_came_after_its_step_as_summary_writers_purge(tmp_path):
    for name, cls in (("torch", SummaryWriter), ("dlexp", EventWriter)):
        first = cls(str(tmp_path / name))
        for step in range(1, 6):
            first.add_scalar("loss", float(step), step)
        first.close()
        time.sleep(1.01)  # (event files are ordered by the second they were opened in)
        again = cls(str(tmp_path / name), purge_step=3)
        for step in range(3, 5):
            again.add_scalar("loss", 10.0 + step, step)
        again.close()
    assert read(tmp_path / "dlexp")["scalars"] == read(tmp_path / "torch")["scalars"]
    assert read(tmp_path / "dlexp")["scalars"]["loss"] == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]
