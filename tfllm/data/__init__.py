"""Raw text to verified TFRecord shards, and shards to tf.data batches.

corpus (sources) -> clean -> tokenizer -> packing -> records (+ manifest) -> verify -> reader;
`prepare` runs the chain. Imports only the shared modules (config, errors).
"""
