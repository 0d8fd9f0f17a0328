"""The DALI index files of a build: NVIDIA DALI's own TFRecord reader reads every record of the built
sample's shards through them (CPU only), and they are byte for byte what DALI's ``tfrecord2idx`` writes.

``nvidia-dali-cuda120`` is in the test extra (it runs CPU-only pipelines without a GPU); these tests
are skipped only where it cannot be installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ilsvrc_assets import archives, release
from ilsvrc_assets.formats.tfrecord import INDEX
from ilsvrc_assets.settings import Settings
from ilsvrc_assets_tests.helpers import records_by_dali, records_by_tensorflow, tfrecord2idx

dali = pytest.importorskip("nvidia.dali")
tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def built(built_sample_graph) -> tuple[Settings, dict[str, list[Path]]]:
    """The built sample's settings and its shards, by split."""
    settings, _, _, failed = built_sample_graph
    assert failed == [], f"the sample graph did not build: {failed}"
    return settings, {
        s: [settings.tfrecords_dir / n for n in settings.shard_names(s)] for s in release.SPLITS
    }


@pytest.mark.parametrize("split", release.SPLITS)
def test_dali_reads_every_record_through_our_index_files(built, split) -> None:
    settings, shards = built
    expected = records_by_tensorflow(shards[split])
    assert len(expected) == len(archives.read_index(settings.image_index(split)))  # every image
    assert records_by_dali(shards[split]) == expected  # count, order, labels, image bytes, decoded sizes


def test_our_index_files_are_what_tfrecord2idx_writes(built, tmp_path: Path) -> None:
    for path in [p for paths in built[1].values() for p in paths]:
        ours = INDEX.path(path).read_bytes()
        assert ours == tfrecord2idx(path, tmp_path / f"{path.name}.idx"), path.name
        assert ours.count(b"\n") > 0 and ours.endswith(b"\n")
