"""Open-weight formats: Hugging Face config.json <-> ModelConfig, per-family tensor maps,
safetensors in and out, keras-hub preset directories in and out, and the `tfllm.convert` stage.

Imports the shared modules, `data`, `model`, `runs` and `tokenizers`.
"""
