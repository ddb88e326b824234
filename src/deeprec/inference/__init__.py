"""Inference worker: one ONNX Runtime session behind deeprec.v1.Inference."""
