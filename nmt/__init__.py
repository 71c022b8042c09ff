"""nmt: neural machine translation with RNN, attention and Transformer models."""

__version__ = "0.1.0"
