"""Image data sets read with torchvision's own classes, decoded once into uint8 tensors.

torchvision decodes each file format for us (IDX for the MNIST family, CIFAR's pickled
batches, STL-10's binaries); we take its whole-array `.data`/`.targets` and never go through
per-sample `__getitem__`. CIFAR-10 and STL-10 are subclassed only to check that the files
exist rather than re-hashing hundreds of megabytes on every run (the download itself is still
verified by its archive checksum).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from dlexp.data.core import DataMeta, Raw, Split
from dlexp.errors import DlexpError

_MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def expected_files(name: str, root: str | Path, split: str = "letters") -> tuple[Path, list[str]]:
    """The folder a data set's files must be in, and their names."""
    root = Path(root).expanduser().resolve()
    if name in ("mnist", "fashion_mnist"):
        return root / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw", _MNIST_FILES
    if name == "emnist":
        return root / "EMNIST" / "raw", [
            f"emnist-{split}-{part}-{kind}-ubyte"
            for part in ("train", "test")
            for kind in ("images-idx3", "labels-idx1")
        ]
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
        return root / "cifar-10-batches-py", files
    if name == "stl10":
        return root / "stl10_binary", ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"]
    raise ValueError(f"no file layout known for data set {name!r}")


_SOURCES = {
    "mnist": "torchvision's MNIST mirrors (the four uncompressed IDX files)",
    "fashion_mnist": "github.com/zalandoresearch/fashion-mnist (the four uncompressed IDX files)",
    "emnist": "biometrics.nist.gov/cs_links/EMNIST/gzip.zip (the uncompressed IDX files of the split)",
    "cifar10": "www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (extracted)",
    "stl10": "ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz (extracted)",
}


def _open(name: str, make, root: str, download: bool, split: str = "letters"):
    """Build the torchvision data set, turning 'not found' and read errors into clear messages."""
    folder, files = expected_files(name, root, split)
    missing = [f for f in files if not (folder / f).is_file()]
    folders = [f for f in missing if (folder / f).is_dir()]
    if folders:
        raise DlexpError(
            f"data={name}: {folder / folders[0]} is a folder, where the data file of that name "
            "should be. Move it away and put the file there (`dlexp data` lists the files "
            "each data set needs)."
        )
    if missing and not download:
        raise DlexpError(
            f"data={name}: {len(missing)} file(s) missing in {folder} ({', '.join(missing)}). "
            f"Download them with `dlexp train data={name} data.download=true` (needs internet), "
            f"or place the files from {_SOURCES[name]} in that folder, or point data.root= "
            f"(or the DLEXP_DATA environment variable) at the folder that holds them. "
            f"`dlexp data` lists every data set and where it is expected."
        )
    try:
        return make(str(Path(root).expanduser().resolve()))
    except DlexpError:
        raise
    except Exception as err:
        if missing:  # download was asked for and failed
            raise DlexpError(
                f"data={name}: could not download into {folder} ({type(err).__name__}: {err}). "
                f"Without internet, place the files from {_SOURCES[name]} there by hand."
            ) from err
        bad = _damaged_file(folder, files)
        which = f"{bad} is truncated or corrupt" if bad else f"a file in {folder} is damaged"
        raise DlexpError(
            f"data={name}: could not read the data files: {which} ({type(err).__name__}: "
            f"{err}). Nothing was deleted. Replace the file with a good copy (or move the "
            f"folder away and run with data.download=true)."
        ) from err


def _damaged_file(folder: Path, files: list[str]) -> Path | None:
    """The first file whose size or content does not fit its format, if one can be found."""
    import pickle
    import struct

    for name in files:
        path = folder / name
        size = path.stat().st_size
        if "-idx" in name:  # IDX: magic, big-endian dims, then prod(dims) bytes
            with path.open("rb") as f:
                head = f.read(4)
                ndim = head[3] if len(head) == 4 else 0
                dims = f.read(4 * ndim)
            if ndim == 0 or len(dims) < 4 * ndim:
                return path
            expected = 4 + 4 * ndim + int(np.prod(struct.unpack(f">{ndim}I", dims)))
            if size != expected:
                return path
        elif name.endswith("_X.bin") and (size == 0 or size % (3 * 96 * 96)):
            return path
        elif name.endswith("_y.bin") and size == 0:
            return path
        elif folder.name == "cifar-10-batches-py":
            try:
                with path.open("rb") as f:
                    pickle.load(f, encoding="latin1")
            except Exception:
                return path
    return None


def _matched(name: str, split: Split, images: Path, labels: Path) -> Split:
    """Images and labels must pair up one to one; a short file would silently drop samples."""
    if len(split.x) != len(split.y):
        raise DlexpError(
            f"data={name}: {images} holds {len(split.x):,} images but {labels} holds "
            f"{len(split.y):,} labels; they must match one to one. One of the files is damaged "
            "or from another copy of the data set: replace it with a good copy (nothing was "
            "deleted)."
        )
    return split


def _mnist_like(name: str, cls, root: str, download: bool) -> Raw:
    def make(r: str):
        return cls(r, train=True, download=download), cls(r, train=False, download=False)

    train, test = _open(name, make, root, download)
    folder = expected_files(name, root)[0]
    meta = DataMeta(name, "image", (1, 28, 28), len(train.classes), list(train.classes))
    return Raw(
        *(
            _matched(name, Split(ds.data.unsqueeze(1), ds.targets), folder / images, folder / labels)
            for ds, (images, labels) in zip((train, test), (_MNIST_FILES[:2], _MNIST_FILES[2:]), strict=True)
        ),
        meta,
    )


def mnist(root: str, download: bool = False) -> Raw:
    return _mnist_like("mnist", datasets.MNIST, root, download)


def fashion_mnist(root: str, download: bool = False) -> Raw:
    return _mnist_like("fashion_mnist", datasets.FashionMNIST, root, download)


def emnist(root: str, download: bool = False, split: str = "letters") -> Raw:
    if split not in datasets.EMNIST.splits:
        raise DlexpError(
            f"data.source.split={split!r} is not an EMNIST split; use one of "
            f"{', '.join(datasets.EMNIST.splits)}."
        )

    def make(r: str):
        return (
            datasets.EMNIST(r, split=split, train=True, download=download),
            datasets.EMNIST(r, split=split, train=False, download=False),
        )

    train, test = _open("emnist", make, root, download, split)
    classes = list(train.classes)
    # The letters split labels a..z as 1..26 with an empty "N/A" class 0: shift to 0..25.
    offset = 1 if classes[0] == "N/A" else 0
    classes = classes[offset:]

    folder, files = expected_files("emnist", root, split)

    def upright(ds, images: str, labels: str) -> Split:  # EMNIST's images are stored transposed
        out = Split(ds.data.transpose(1, 2).unsqueeze(1).contiguous(), ds.targets - offset)
        return _matched("emnist", out, folder / images, folder / labels)

    meta = DataMeta("emnist", "image", (1, 28, 28), len(classes), classes)
    return Raw(upright(train, *files[:2]), upright(test, *files[2:]), meta)


class _CIFAR10(datasets.CIFAR10):
    meta = {**datasets.CIFAR10.meta, "md5": None}

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return all((folder / f).is_file() for f, _ in self.train_list + self.test_list)


def cifar10(root: str, download: bool = False) -> Raw:
    def make(r: str):
        return _CIFAR10(r, train=True, download=download), _CIFAR10(r, train=False)

    train, test = _open("cifar10", make, root, download)

    folder = expected_files("cifar10", root)[0]

    def split(ds, files: str) -> Split:  # torchvision keeps CIFAR as HWC numpy arrays
        x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        out = Split(x, torch.tensor(ds.targets, dtype=torch.long))
        return _matched("cifar10", out, folder / files, folder / files)

    meta = DataMeta("cifar10", "image", (3, 32, 32), len(train.classes), list(train.classes))
    return Raw(split(train, "data_batch_1..5"), split(test, "test_batch"), meta)


STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


class _STL10(datasets.STL10):
    def _check_integrity(self) -> bool:  # the labelled part only; unlabeled_X.bin is 2.6 GB
        folder = Path(self.root) / self.base_folder
        return all((folder / f).is_file() for f, _ in self.train_list[:2] + self.test_list)


def stl10(root: str, download: bool = False) -> Raw:
    def make(r: str):
        return _STL10(r, split="train", download=download), _STL10(r, split="test")

    train, test = _open("stl10", make, root, download)

    folder = expected_files("stl10", root)[0]

    def split(ds, part: str) -> Split:
        x = torch.from_numpy(np.ascontiguousarray(ds.data))
        out = Split(x, torch.from_numpy(ds.labels.astype(np.int64)))
        return _matched("stl10", out, folder / f"{part}_X.bin", folder / f"{part}_y.bin")

    classes = list(getattr(train, "classes", None) or STL10_CLASSES)
    meta = DataMeta("stl10", "image", (3, 96, 96), 10, classes)
    return Raw(split(train, "train"), split(test, "test"), meta)


def _gaussians(
    n: int, size: int, denominators: torch.Tensor, offset: float, noise: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The course's Gaussian images: on a size x size grid over [-4, 4], exp(-((X-a)^2 + (Y-b)^2)
    / d) with centre (a, b) ~ N(0, offset^2) and d per image, plus N(0, noise^2) pixel noise.
    Float images (n, size, size) and their centres (n, 2), x (columns) first."""
    axis = torch.linspace(-4, 4, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    centre = offset * torch.randn(n, 2, 1, 1, generator=gen)
    d = denominators.view(n, 1, 1)
    images = torch.exp(-((xx - centre[:, 0]) ** 2 + (yy - centre[:, 1]) ** 2) / d)
    return images + noise * torch.randn(images.shape, generator=gen), centre.view(n, 2)


def gaussian_classes(
    n_per_class: int = 1000,
    size: int = 91,
    widths: tuple[float, float] = (1.8, 2.4),
    offset: float = 2.0,
    noise: float = 0.2,
    seed: int = 0,
) -> Raw:
    """The labelled Gaussians of DUDL_CNN_GaussClass (and FeatureMaps, LinearUnits,
    Softcoding): the class is the width, exp(-r^2 / (2 w^2)) with w from `widths`, images
    alternating between the classes, centres ~ N(0, 2^2), noise N(0, 0.2^2)."""
    gen = torch.Generator().manual_seed(seed)
    k, n = len(widths), n_per_class * len(widths)
    labels = torch.arange(n) % k
    w = torch.tensor([float(v) for v in widths])[labels]
    images, _ = _gaussians(n, size, 2 * w**2, offset, noise, gen)
    names = [f"width {v:g}" for v in widths]
    meta = DataMeta("gaussian_classes", "image", (1, size, size), k, names)
    return Raw(Split(images.unsqueeze(1), labels), None, meta)


def gaussian_positions(
    n: int = 1000,
    size: int = 91,
    widths: tuple[float, float] = (5.0, 15.0),
    offset: float = 2.0,
    noise: float = 0.1,
    seed: int = 0,
) -> Raw:
    """The Gaussians of DUDL_CNN_findGauss, with their centre x, y and width as three
    regression targets: exp(-r^2 / w), w ~ U(widths), centres ~ N(0, 2^2), noise N(0, 0.1^2)."""
    gen = torch.Generator().manual_seed(seed)
    w = widths[0] + (widths[1] - widths[0]) * torch.rand(n, generator=gen)
    images, centre = _gaussians(n, size, w, offset, noise, gen)
    targets = torch.cat([centre, w.view(n, 1)], 1)
    meta = DataMeta("gaussian_positions", "image", (1, size, size), 0, num_targets=3)
    return Raw(Split(images.unsqueeze(1), targets), None, meta)


def gaussian_widths(
    n: int = 3000,
    size: int = 64,
    widths: tuple[float, float] = (1.8, 1.8 + 1 / 0.6),
    offset: float = 2.0,
    noise: float = 0.2,
    seed: int = 0,
) -> Raw:
    """The Gaussians a GAN learns to draw (DUDL_GAN_CNNganGaus, codeChallengeGaus):
    exp(-r^2 / (2 w^2)) with w ~ U(widths), centres ~ N(0, 2^2), noise N(0, 0.2^2); no labels."""
    gen = torch.Generator().manual_seed(seed)
    w = widths[0] + (widths[1] - widths[0]) * torch.rand(n, generator=gen)
    images, _ = _gaussians(n, size, 2 * w**2, offset, noise, gen)
    meta = DataMeta("gaussian_widths", "image", (1, size, size), 0)
    return Raw(Split(images.unsqueeze(1), torch.zeros(n, dtype=torch.long)), None, meta)


def bars(n: int = 2000, size: int = 30, seed: int = 0) -> Raw:
    """DUDL_CNNmilestone_project4's images: N(0, 1) noise with one bar of 1s, 2-5 pixels wide
    at 2..27, across (class 0, horizontal) or down (class 1, vertical) with equal chance."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, size, size, generator=gen)
    start = torch.randint(2, 28, (n,), generator=gen)
    width = torch.randint(2, 6, (n,), generator=gen)
    down = torch.randn(n, generator=gen) <= 0
    for i in range(n):
        band = slice(int(start[i]), int(start[i] + width[i]))
        if down[i]:
            images[i, :, band] = 1.0
        else:
            images[i, band, :] = 1.0
    meta = DataMeta("bars", "image", (1, size, size), 2, ["horizontal", "vertical"])
    return Raw(Split(images.unsqueeze(1), down.long()), None, meta)


def gaussian_blobs(
    n: int = 1000,
    size: int = 91,
    widths: tuple[float, float] = (2.0, 20.0),
    offset: float = 1.5,
    noise: float = 0.2,
    bars: bool = True,
    seed: int = 0,
) -> Raw:
    """The course's generated images (DUDL_CNN_GaussAE): a 2-D Gaussian on a grid over
    [-4, 4], exp(-((X-a)^2 + (Y-b)^2) / w) with w from `widths` (evenly spaced over the n
    images) and a random centre (a, b) ~ N(0, offset^2), plus N(0, noise^2) pixel noise and,
    with `bars`, one occluding bar of value 1 (2-5 pixels wide, across or down, at 2..27).
    Float images (1, size, size), used as they are (no uint8 scaling); no classes."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.linspace(widths[0], widths[1], n)
    images, _ = _gaussians(n, size, w, offset, noise, gen)
    if bars:
        start = torch.randint(2, 28, (n,), generator=gen)
        width = torch.randint(2, 6, (n,), generator=gen)
        across = torch.rand(n, generator=gen) > 0.5
        for i in range(n):
            band = slice(int(start[i]), int(start[i] + width[i]))
            if across[i]:
                images[i, band, :] = 1.0
            else:
                images[i, :, band] = 1.0
    x = images.unsqueeze(1).float()
    return Raw(Split(x, torch.zeros(n, dtype=torch.long)), None,
               DataMeta("gaussian_blobs", "image", (1, size, size), 0))
