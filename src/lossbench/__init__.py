"""lossbench: a benchmark for the training losses of sequential recommenders."""

__version__ = "0.1.0"
