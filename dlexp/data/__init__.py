"""Data sets as tensors: every loader yields uint8 images or float features plus metadata.

`load_data` turns a `data` config into train/val/test `Split`s that the trainer batches by
indexing; nothing here runs per sample.
"""

from dlexp.data.core import Data, DataMeta, Split
from dlexp.data.load import load_data

__all__ = ["Data", "DataMeta", "Split", "load_data"]
