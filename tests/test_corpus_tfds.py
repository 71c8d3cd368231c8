"""TFDS source: a small dataset built on disk with tensorflow-datasets' own builder, no download."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds
from _data_helpers import WORDS, small_config

from tfllm.corpus import prepare
from tfllm.corpus.sources import parse_tfds_source
from tfllm.errors import DataError


class TfllmTinyText(tfds.core.GeneratorBasedBuilder):
    """Pseudo-code documents, generated: the builder downloads nothing."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="small"), tfds.core.BuilderConfig(name="big")]

    def _info(self):
        features = tfds.features.FeaturesDict(
            {"id": tfds.features.Scalar(np.int32), "content": tfds.features.Text()}
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            "train": self._generate_examples(120 if self.builder_config.name == "small" else 200)
        }

    def _generate_examples(self, count):
        for i in range(count):
            text = " ".join(WORDS[(i * j + 3 * j) % len(WORDS)] for j in range(40))
            yield i, {"id": i, "content": f"# example {i}\n{text}\n"}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = TfllmTinyText(config="small", data_dir=str(data_dir))
    builder.download_and_prepare(download_dir=str(data_dir / "downloads"))
    return data_dir


def test_tfds_source_prepares_from_a_local_dataset(tfds_dir, tmp_path):
    cfg = small_config(
        tmp_path,
        "tfds:tfllm_tiny_text/small:train",
        "tfds",
        f"data.tfds_data_dir={tfds_dir}",
        "data.text_field=content",
    )
    manifest = prepare.prepare(cfg)
    assert manifest["cleaning"]["documents"] == 120
    assert sum(s["documents"] for s in manifest["splits"].values()) == 120
    for info in manifest["splits"].values():
        assert info["tokens_in"] == info["tokens_written"] + info["tokens_dropped"]


def test_tfds_mistakes_are_one_line_errors(tfds_dir, tmp_path):
    def prepare_source(source, field="content"):
        cfg = small_config(
            tmp_path, source, "bad", f"data.tfds_data_dir={tfds_dir}", f"data.text_field={field}"
        )
        prepare.prepare(cfg)

    with pytest.raises(DataError, match="no feature 'text' .*features: id, content"):
        prepare_source("tfds:tfllm_tiny_text/small:train", field="text")
    with pytest.raises(DataError, match="not prepared"):
        prepare_source("tfds:tfllm_tiny_text/big:train")
    with pytest.raises(DataError, match="tfllm_no_such_dataset"):
        prepare_source("tfds:tfllm_no_such_dataset:train")
    with pytest.raises(DataError, match="expected tfds:NAME"):
        parse_tfds_source("tfds:only_a_name")
