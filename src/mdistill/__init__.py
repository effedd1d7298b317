"""mdistill: multilingual sentence-embedding distillation on Ray."""

__version__ = "0.1.0"
