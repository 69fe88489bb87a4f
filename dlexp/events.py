"""The TensorBoard writer of every run: SummaryWriter's API without its background thread.

`SummaryWriter` starts a writer thread per event file and checksums every record in pure
Python (~35 µs a record, competing with training for the GIL: a 1,000-epoch course run logs
1,000 epochs); a stacked group of 2,000 jobs would start 2,000 threads. `EventWriter` is a
SummaryWriter (the same add_scalar, add_image, add_pr_curve, ...) whose records are buffered
in memory and appended to the event file every few seconds, on `flush()` (each checkpoint) and
on `close()`, checksummed with google-crc32c. `scalars()` writes an epoch's scalars as one
event encoded directly.
"""

from __future__ import annotations

import functools
import os
import socket
import struct
import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from torch.utils.tensorboard.writer import FileWriter, SummaryWriter

try:
    from google_crc32c import value as _crc32c
except ImportError:  # pragma: no cover - the pure-Python one TensorBoard ships
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c as _crc32c


def _masked_crc(data: bytes) -> bytes:
    x = _crc32c(data) & 0xFFFFFFFF
    return struct.pack("<I", (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@functools.lru_cache(maxsize=4096)
def scalar_head(tag: str) -> bytes:
    """A Summary.Value with this tag and a simple_value, but for the value's 4 bytes."""
    name = tag.encode()
    inner = b"\x0a" + _varint(len(name)) + name + b"\x15"
    return b"\x0a" + _varint(len(inner) + 4) + inner


def scalars_events(tags: list[str], values, step: int, wall_time: float) -> list[bytes]:
    """One Event of simple scalars per row of `values` (a float32 array, jobs x tags): a
    group's epoch encoded at once, each row's Summary laid out by one numpy record array
    (protobuf's Python objects cost ~10 µs an event; a 2,000-job group logs millions)."""
    import numpy as np

    heads = [scalar_head(t) for t in tags]
    fields = []
    for i, head in enumerate(heads):
        fields += [(f"h{i}", f"S{len(head)}"), (f"v{i}", "<f4")]
    rows = np.empty(len(values), np.dtype(fields))  # (packed: no padding between fields)
    for i, head in enumerate(heads):
        rows[f"h{i}"], rows[f"v{i}"] = head, values[:, i]
    body, size = rows.tobytes(), rows.dtype.itemsize
    prefix = _event_head(step, wall_time) + b"\x2a" + _varint(size)
    return [prefix + body[j * size : (j + 1) * size] for j in range(len(values))]


def _event_head(step: int, wall_time: float) -> bytes:
    """An Event's wall_time and step fields."""
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)


@functools.lru_cache(maxsize=256)
def _summary_packer(tags: tuple[str, ...]) -> tuple[bytes, struct.Struct, list]:
    """For scalars events with these tags: the Summary field's tag and length, a struct that
    packs the values between the tags' bytes (one C call an event) and its argument list with
    the tags' bytes in place (values go in the odd slots)."""
    heads = [scalar_head(t) for t in tags]
    packer = struct.Struct("<" + "".join(f"{len(h)}sf" for h in heads))
    return b"\x2a" + _varint(packer.size), packer, [x for h in heads for x in (h, 0.0)]


def record(data: bytes) -> bytes:
    """One TFRecord: length, its checksum, the data, its checksum."""
    header = struct.pack("<Q", len(data))
    return header + _masked_crc(header) + data + _masked_crc(data)


class EventFile:
    """What FileWriter needs from an event writer: records kept until `flush()`."""

    count = 0  # distinct names for files opened in the same second by one process
    flush_seconds = 5.0  # TensorBoard shows a running run's curves this fresh

    def __init__(self, log_dir: str | Path) -> None:
        EventFile.count += 1
        self.log_dir = str(log_dir)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
        Path(log_dir).mkdir(parents=True, exist_ok=True)  # (as SummaryWriter makes it)
        self.path = Path(log_dir) / f"{name}.{os.getpid()}.{EventFile.count}"
        self.buffer = bytearray()
        self.flushed = time.monotonic()
        self.add_event(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def get_logdir(self) -> str:
        return self.log_dir

    def add_event(self, event: Event) -> None:
        self.add_raw(event.SerializeToString())

    def add_raw(self, data: bytes) -> None:
        self.buffer += record(data)
        if time.monotonic() - self.flushed > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        self.flushed = time.monotonic()
        if self.buffer:
            with open(self.path, "ab") as f:
                f.write(self.buffer)
            self.buffer.clear()

    def close(self) -> None:
        self.flush()


class _FileWriter(FileWriter):
    def __init__(self, log_dir: str) -> None:  # no EventFileWriter, no thread
        self.event_writer = EventFile(log_dir)


class EventWriter(SummaryWriter):
    """SummaryWriter's API; events reach the disk every few seconds, on flush() and close()."""

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Scalars as one event (add_scalar writes an event per value)."""
        field, packer, args = _summary_packer(tuple(values))
        args = args.copy()
        args[1::2] = values.values()
        try:
            summary = packer.pack(*args)
        except OverflowError:  # beyond float32: inf, as protobuf stores it
            import numpy as np

            with np.errstate(over="ignore"):
                floats = np.asarray(args[1::2], dtype=np.float64).astype(np.float32)
            args[1::2] = floats.tolist()
            summary = packer.pack(*args)
        self.raw(_event_head(int(step), time.time()) + field + summary)

    def raw(self, event: bytes) -> None:
        """An Event already encoded (scalars_events: a group encodes each epoch once)."""
        self._get_file_writer().event_writer.add_raw(event)

    def _get_file_writer(self) -> FileWriter:
        if self.file_writer is None:
            self.file_writer = _FileWriter(self.log_dir)
            self.all_writers = {self.log_dir: self.file_writer}
            if self.purge_step is not None:  # TensorBoard drops what came after this step
                events = self.file_writer.event_writer
                events.add_event(Event(step=self.purge_step, file_version="brain.Event:2"))
                start = SessionLog(status=SessionLog.START)
                events.add_event(Event(step=self.purge_step, session_log=start))
                self.purge_step = None
        return self.file_writer
