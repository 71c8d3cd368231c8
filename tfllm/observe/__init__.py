"""Watching a run: TensorBoard scalars and text, FLOPs and MFU, profiler windows, the console
progress line.

Imports only the shared modules.
"""
