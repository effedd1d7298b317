"""Downstream tasks on the built-in corpus (labelled views of its rows, for task distillation)."""
