"""Small data sets written in the exact on-disk formats torchvision reads.

Each image is noise plus a bright square whose position depends on the class, so a model can
learn it in one short epoch.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def images(n: int, classes: int, c: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, c, size, size) uint8 images and their labels 0..classes-1."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    x = rng.integers(0, 60, size=(n, c, size, size), dtype=np.uint8)
    block = max(2, size // 7)
    per_row = max(1, (size - block) // block)
    for i, label in enumerate(y):
        r, col = divmod(int(label), per_row)
        r0, c0 = (r * block) % (size - block), col * block
        x[i, :, r0 : r0 + block, c0 : c0 + block] = 250
    return x, y


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX file: magic 0x0000 08 <ndim>, big-endian int32 dimensions, then the uint8 bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def mnist_root(root: Path, folder: str = "MNIST", n_train: int = 200, n_test: int = 100) -> Path:
    """<root>/<folder>/raw with the four MNIST IDX files (also FashionMNIST's layout)."""
    raw = root / folder / "raw"
    for part, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = images(n, 10, 1, 28, seed)
        write_idx(raw / f"{part}-images-idx3-ubyte", x[:, 0])
        write_idx(raw / f"{part}-labels-idx1-ubyte", y)
    return root


def emnist_root(root: Path, split: str = "letters", n_train: int = 260, n_test: int = 130) -> Path:
    """EMNIST's layout: images stored transposed; letters labelled 1..26 (0 is an unused N/A)."""
    classes, offset = (26, 1) if split == "letters" else (10, 0)
    raw = root / "EMNIST" / "raw"
    for part, n, seed in (("train", n_train, 2), ("test", n_test, 3)):
        x, y = images(n, classes, 1, 28, seed)
        write_idx(raw / f"emnist-{split}-{part}-images-idx3-ubyte", x[:, 0].transpose(0, 2, 1))
        write_idx(raw / f"emnist-{split}-{part}-labels-idx1-ubyte", y + offset)
    return root


def cifar10_root(root: Path, n_per_batch: int = 40, n_test: int = 100) -> Path:
    """cifar-10-batches-py: pickled dicts with 'data' (N, 3072) uint8 rows and 'labels'."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]
    for i, name in enumerate([*names, "test_batch"]):
        n = n_test if name == "test_batch" else n_per_batch
        x, y = images(n, 10, 3, 32, 10 + i)
        entry = {"batch_label": name, "labels": y.tolist(), "data": x.reshape(n, -1)}
        (folder / name).write_bytes(pickle.dumps(entry))
    labels = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": labels}))
    return root


def stl10_root(root: Path, n_train: int = 50, n_test: int = 30) -> Path:
    """stl10_binary: raw uint8 images stored column-major (N, 3, 96, 96) and labels 1..10."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    for part, n, seed in (("train", n_train, 20), ("test", n_test, 21)):
        x, y = images(n, 10, 3, 96, seed)
        (folder / f"{part}_X.bin").write_bytes(
            np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes()
        )
        (folder / f"{part}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
    return root
