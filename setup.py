"""tfllm: train decoder-only Transformer language models with TensorFlow and Keras 3."""

from setuptools import find_packages, setup

# One tested set: TensorFlow 2.21 here, 2.20 on Cloud TPU (`tensorflow-tpu` has no 2.21 yet).
# tensorflow-text must match TensorFlow's minor version, so it is pinned next to it.
INSTALL_REQUIRES = [
    "tensorflow>=2.20,<2.22",
    "tensorflow-text>=2.20,<2.22",
    "keras>=3.15.1,<4",
    "keras-hub==0.32.*",
    "tensorflow-datasets==4.9.*",
    "tensorboard>=2.20,<2.22",
    "sentencepiece>=0.2",
    "pyyaml>=6",
    "numpy",
]

EXTRAS_REQUIRE = {
    # dill/tblib/portpicker: TF's multi-process test runner silently skips without them.
    # tensorflow-serving-api: the export tests parse and replay the warmup PredictionLogs.
    # tensorboard-plugin-profile: the tests ask a real TensorBoard for the captured trace.
    "test": [
        "pytest>=8",
        "dill",
        "tblib",
        "portpicker",
        "ruff",
        "tensorflow-serving-api>=2.20,<2.22",
        "tensorboard-plugin-profile",
        "safetensors>=0.4",
    ],
    "tpu": [
        "tensorflow-tpu==2.20.0",
        "libtpu~=0.0.14",
        "tensorflow-text~=2.20.0",
        "tensorboard~=2.20.0",
    ],
    "gpu": ["tensorflow[and-cuda]>=2.20,<2.22"],
    "serving": ["tensorflow-serving-api>=2.20,<2.22"],
    # tfllm.convert: Hugging Face safetensors in and out (ml_dtypes, for bfloat16, comes with TF)
    "hub": ["safetensors>=0.4"],
    "profile": ["tensorboard-plugin-profile"],
    # Only the PyTorch peer of benchmarks/ needs it; take the CPU wheel from PyTorch's index
    # (--extra-index-url https://download.pytorch.org/whl/cpu): PyPI's pulls GBs of CUDA.
    "bench": ["torch==2.13.0"],
}

setup(
    name="tfllm",
    version="0.1.0",
    description="Decoder-only Transformer LMs with TensorFlow, Keras 3, XLA and tf.distribute",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tfllm", "tfllm.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
