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
    # out_type="numpy" (prepare's workers: no Python int per token); 0.2.1 lacks it.
    "sentencepiece>=0.2.3",
    "pyyaml>=6",
    "jinja2>=3",  # chat templates, rendered as transformers renders them
    "numpy",
]

EXTRAS_REQUIRE = {
    # dill/tblib/portpicker: TF's multi-process test runner silently skips without them.
    # tensorflow-serving-api: the export tests parse and replay the warmup PredictionLogs.
    # tensorboard-plugin-profile (with xprof): the tests ask a real TensorBoard and XProf for
    # the captured trace's Overview; its JSON layout is the one of 2.24.
    "test": [
        "pytest>=8",
        "dill",
        "tblib",
        "portpicker",
        "ruff",
        "tensorflow-serving-api>=2.20,<2.22",
        "tensorboard-plugin-profile>=2.24",
        "tokenizers>=0.20",  # the reference the in-graph HF tokenizers are tested against
        "ai-edge-litert>=2.3",
        "tf2onnx>=1.17",
        "onnxruntime>=1.20",
        "lm-eval==0.4.*",
        "pyarrow",
        "zstandard",
        "datasketch>=2.0",
        "datasets",
        "apache-beam>=2.69",  # prepare --runner beam (see the beam extra)
        "safetensors>=0.4",
        "hypothesis>=6",  # the fuzz suite of hostile input (tests/test_fuzz.py)
    ],
    # --format litert runs with TensorFlow's converter alone; the interpreter is for checking.
    "litert": ["ai-edge-litert>=2.3"],
    # Installs next to TF 2.21 and protobuf 7 here (tf2onnx 1.17, onnx 1.23, onnxruntime 1.32).
    "onnx": ["tf2onnx>=1.17", "onnxruntime>=1.20"],
    # Jinja task templates and the lm-evaluation-harness adapter (lm-eval 0.4.13's core needs
    # no torch: about 30 s to install here).
    "eval": ["jinja2>=3", "lm-eval==0.4.*"],
    # Corpus formats and near-duplicate removal in prepare (Parquet and save_to_disk, .zst,
    # MinHash); plain text, JSON Lines (.gz) and TFDS need none of them.
    "data": ["pyarrow", "zstandard", "datasketch>=2.0"],
    # prepare --runner beam. apache-beam 2.77 downgrades protobuf 7 -> 6.33 and pyarrow 26 -> 25;
    # TF 2.21, tensorflow-text, tf2onnx/onnxruntime, lm-eval and datasets pass their tests with
    # them, so it is in `test` too. Never apache-beam[tensorflow]: it pins an older TensorFlow.
    "beam": ["apache-beam>=2.69"],
    "tpu": [
        "tensorflow-tpu==2.20.0",
        "libtpu~=0.0.14",
        "tensorflow-text~=2.20.0",
        "tensorboard~=2.20.0",
    ],
    "gpu": ["tensorflow[and-cuda]>=2.20,<2.22"],
    "serving": ["tensorflow-serving-api>=2.20,<2.22"],
    # tfllm.convert: Hugging Face safetensors in and out (ml_dtypes, for bfloat16, comes with TF);
    # tokenizers: prepare's workers read a corpus with an imported tokenizer.json, and a
    # keras-hub preset's byte-level BPE tokenizer becomes a tokenizer.json.
    "hub": ["safetensors>=0.4", "tokenizers>=0.20"],
    "profile": ["tensorboard-plugin-profile"],
    # Only the PyTorch peer of benchmarks/ needs it; take the CPU wheel from PyTorch's index
    # (--extra-index-url https://download.pytorch.org/whl/cpu): PyPI's pulls GBs of CUDA.
    # transformers: the PyTorch peer of benchmarks/llama_bench.py is its LlamaForCausalLM
    "bench": ["torch==2.13.0", "tokenizers>=0.20", "transformers>=4.45"],
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
