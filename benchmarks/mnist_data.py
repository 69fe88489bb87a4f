"""The real MNIST digits from ../shared/data laid out as a torchvision MNIST root.

The first 8,000 test-set digits become the training files and the last 2,000 the test files.
When ../shared/data is absent, generated digits-like data of the same shape is written instead
(and `prepare` says so).
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-t10k"


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def prepare(root: Path, n_train: int = 8000) -> str:
    """Write <root>/MNIST/raw; returns 'real' or 'generated'."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    if (SHARED / "t10k-images-idx3-ubyte.gz").is_file():
        x = _read_idx(SHARED / "t10k-images-idx3-ubyte.gz")
        y = _read_idx(SHARED / "t10k-labels-idx1-ubyte.gz")
        kind = "real"
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from fake_data import images

        x, y = images(10_000, 10, 1, 28, seed=0)
        x = x[:, 0]
        kind = "generated"
    for part, sl in (("train", slice(0, n_train)), ("t10k", slice(n_train, None))):
        _write_idx(raw / f"{part}-images-idx3-ubyte", x[sl])
        _write_idx(raw / f"{part}-labels-idx1-ubyte", y[sl])
    return kind


if __name__ == "__main__":
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else "data")
    print(f"{prepare(dest)} MNIST written to {dest / 'MNIST' / 'raw'}")
