"""Evaluation: bits per byte, multiple choice and generation tasks on a trained model or an
export, in lm-evaluation-harness's vocabulary (`python -m tfllm.eval`, `train.eval_tasks`).

Imports the shared modules, `data`, `model`, `observe`, `runs`, `serve` and `tokenizers`.
"""
