"""Bring your own model: ONNX graphs with embedding-bag lookups as deeprec artifacts."""

from .analysis import ModelImportError
from .write import import_onnx

__all__ = ["ModelImportError", "import_onnx"]
