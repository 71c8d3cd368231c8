"""The prepare pipeline (`python -m tfllm.prepare`): raw text to a prepared dataset.

    sources -> formats -> clean, filters -> dedup -> tokenize (stream: worker processes) ->
    assemble (pack, shards, manifest); resume and snapshot make it restartable, beam runs the
    same pipeline on Apache Beam, sft and sft_prepare handle instruction and chat data,
    progress reports how far it is.

It writes what `tfllm.data` reads. Training, evaluation and serving never import it: they
read the prepared dataset through `tfllm.data`; the `train` command and `tfllm.train` pass
`prepare` in when the data must be made first.
"""
