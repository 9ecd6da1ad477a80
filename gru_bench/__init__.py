"""gru-bench: reproduce Chung et al. (2014) on the four polyphonic-music datasets."""

__version__ = "0.1.0"
