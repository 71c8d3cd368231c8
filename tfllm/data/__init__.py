"""What training reads: a prepared dataset.

    layout    where a dataset's shards, tokenizer and manifest are, which split a document
              belongs to, whether a dataset fits a config
    records   the TFRecord schema: shard writer, manifest, batch decoding
    packing   how documents are packed into the windows a record holds (segment ids)
    verify    shards checked against the manifest before reading
    reader    shards to tf.data batches

Imports only the shared modules; the pipeline that writes datasets is `tfllm.corpus`.
"""
