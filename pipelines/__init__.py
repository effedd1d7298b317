"""Recipes: end-to-end pipelines read top to bottom (``run``, ``tune``, ``schedule``). They import
only ``mdistill.*`` stages, never each other.

Installed as ``mdistill.pipelines`` so the CLI and Ray workers import them.
"""
