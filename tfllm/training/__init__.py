"""The training loop and what it stands on: the compiled steps, the optimizer, strategies,
preemption and non-finite handling.

Imports the shared modules, `data`, `model`, `observe`, `runs`, `tokenizers`, `serve` (for
samples) and `eval` (for evaluation during training).
"""
