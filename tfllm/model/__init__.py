"""The language model: attention core, projections, layers, and `lm.TransformerLM`, the one
forward pass used by training, evaluation, decoding and export.

Imports only the shared modules.
"""
