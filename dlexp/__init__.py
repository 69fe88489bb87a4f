"""dlexp: command-line deep-learning experiments (Hydra configs, one shared trainer, TensorBoard)."""

__version__ = "0.1.0"
