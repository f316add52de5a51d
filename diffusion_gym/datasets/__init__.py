"""Datasets that ship inside PyPI packages (nothing is downloaded)."""
