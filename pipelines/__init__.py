"""Recipes: end-to-end pipelines read top to bottom (corpus, teacher, train, evaluate, run).

Installed as ``mdistill.pipelines`` so the CLI and Ray workers import them.
"""
