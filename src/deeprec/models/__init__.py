"""Model zoo: DeepRecSys architectures as ONNX artifacts, and the NumPy reference."""
