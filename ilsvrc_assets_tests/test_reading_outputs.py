"""The loading examples of the README ("Reading the outputs"), run as written against the built sample.

Each ``python`` block of that section is executed in the folder the sample was built in (its
``data/`` is the default ``ILSVRC_DATA_DIR``), then what it made is read: every training record
through the ``tf.data`` example, a few batches through the DALI example (on the CPU).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def readme_examples() -> list[str]:
    """The ``python`` code blocks of the README's "Reading the outputs" section, in order."""
    text = README.read_text()
    section = text.split("### Reading the outputs\n", 1)[1]
    section = re.split(r"\n##+ ", section, maxsplit=1)[0]  # up to the next heading of any level
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


@pytest.fixture(scope="module")
def built(built_sample_graph, monkeypatch_module):
    settings, _, _, failed = built_sample_graph
    assert failed == [], f"the sample graph did not build: {failed}"
    assert settings.data_dir.name == "data"
    monkeypatch_module.chdir(settings.data_dir.parent)  # the README's paths are relative to it
    manifest = json.loads(settings.manifest_json.read_text())
    return settings, manifest["splits"]["train"]


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_readme_has_the_two_examples() -> None:
    tf_data, dali = readme_examples()
    assert "tf.data.TFRecordDataset" in tf_data and "fn.readers.tfrecord" in dali and "index_path" in dali


def test_the_tf_data_example_reads_every_training_record(built) -> None:
    _, train = built
    found: dict[str, object] = {}
    exec(readme_examples()[0], found)  # noqa: S102 (the README's own code, as a user runs it)
    labels: Counter[int] = Counter()
    for image, label in found["dataset"].as_numpy_iterator():
        assert image.ndim == 3 and image.shape[2] == 3
        labels[int(label)] += 1
    assert sum(labels.values()) == train["records"]
    assert {str(k): v for k, v in sorted(labels.items())} == train["labels"]


def test_the_dali_example_reads_the_shards_with_the_index_files(built) -> None:
    pytest.importorskip("nvidia.dali")  # in the test extra
    _, train = built
    found: dict[str, object] = {}
    exec(readme_examples()[1], found)  # noqa: S102 (the README's own code, as a user runs it)
    pipe = found["imagenet"]()
    pipe.build()
    assert pipe.epoch_size("reader") == train["records"]
    for _ in range(min(3, math.ceil(train["records"] / 256))):
        images, labels = pipe.run()
        assert len(images) == len(labels) == 256
        for i in range(len(images)):
            assert images.at(i).ndim == 3 and images.at(i).shape[2] == 3
            assert str(int(labels.at(i)[0])) in train["labels"]
