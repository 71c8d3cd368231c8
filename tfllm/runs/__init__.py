"""A training workdir as a thing on disk: its checkpoints, its writer lock, and loading a
trained model from it (the one reader that `generate`, `export` and later tools share).

Imports the shared modules, `data` and `model`.
"""
