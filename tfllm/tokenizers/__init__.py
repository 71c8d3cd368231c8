"""Tokenizers: text to token ids and back, in the graph (tf.data, the exported SavedModel) and
in eager Python, and the ids a model's text conventions need.

    tokenizer      SentencePiece: training, the in-graph op, the start/stop/pad ids (`specials`),
                   and `load_tokenizer`, which opens either kind of tokenizer by its path
    hf_tokenizer   Hugging Face byte-level BPE (`tokenizer.json`) and `tokenizer.model` files
                   with their BOS/EOS metadata
    bpe            the byte-level BPE merge loop as TensorFlow ops
    chat           chat templates: Jinja (sandboxed) and the built-in one

A leaf package: it imports only the shared modules (config, errors, validation, files,
templates), so training, serving, evaluation and the prepare pipeline can all use it.
"""
