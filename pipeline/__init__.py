"""The Kubeflow pipeline definition (see pipeline.py)."""

from pipeline.pipeline import build

__all__ = ["build"]
