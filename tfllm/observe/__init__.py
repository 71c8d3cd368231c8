"""Watching a run: TensorBoard scalars and text, FLOPs and MFU, profiler windows, the training
progress line (drawn by `tfllm.progress`).

Imports only the shared modules.
"""
