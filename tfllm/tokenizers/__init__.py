"""Tokenizers: text to token ids and back, in the graph (tf.data, the exported SavedModel) and
in eager Python, and the ids a model's text conventions need.

    tokenizer      SentencePiece: training, the in-graph op, the start/stop/pad ids (`specials`),
                   and `load_tokenizer`, which opens either kind of tokenizer by its path
    hf_tokenizer   Hugging Face tokenizers (byte-level BPE `tokenizer.json`, SentencePiece
                   `tokenizer.model`) with their BOS/EOS metadata, in the graph
    bpe            byte-level BPE as TensorFlow ops: pre-tokenizer split and merge loop
    chat           chat templates: conversations to text, cut into trained and untrained
                   segments for the loss mask

A leaf package: it imports only the shared modules (config, errors, validation, files,
templates), so training, serving, evaluation and the prepare pipeline can all use it.
"""
