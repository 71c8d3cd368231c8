"""tfllm: decoder-only Transformer LMs with TensorFlow, Keras 3, XLA and tf.distribute."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) buries the lines a user needs.
# This must run before TensorFlow is imported; an explicit user setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
