"""Running a model: sessions by embedding mode, dynamic batching, one worker's run loop.

Shared by the inference worker (behind gRPC) and the frontend's in-process workers.
"""
