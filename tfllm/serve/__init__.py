"""Using a trained model: cached decoding and sampling, the serving `tf.Module`, and the
SavedModel export for TF Serving.

Imports the shared modules, `data`, `model`, `runs` and `tokenizers`; never `training`.
"""
