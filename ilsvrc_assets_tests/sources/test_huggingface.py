"""The huggingface source: the data files of ``ILSVRC/imagenet-1k`` in place, or fetched from a hub.

The sample written in the hub's layout (``sample.huggingface``) is built and compared with ONE build
of the official layout; a copy written here by hand (``tarfile`` + ``gzip``) is checked record by
record; damaged copies fail naming the file; the download goes through ``huggingface_hub`` against a
loopback server speaking the hub's resolve protocol.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from ilsvrc_assets import gzip_index, release
from ilsvrc_assets.archives import ArchiveError
from ilsvrc_assets.sample.huggingface import write_layout
from ilsvrc_assets.sources import huggingface as hf
from ilsvrc_assets_tests.helpers import (
    HubServer,
    assert_synsets_as_official_but_the_devkit_ids,
    build_in_new_instance,
    final_files,
    make_settings,
    rgb_jpeg,
)

pytestmark = pytest.mark.long(seconds=500)  # conftest: the long files start first

TOKEN = "hf_Tk93-never-shown-anywhere"


@pytest.fixture(scope="module")
def hf_copy(sample_release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in sample in the Hugging Face layout (``data/*.tar.gz``)."""
    dest = tmp_path_factory.mktemp("hf") / "imagenet-1k"
    write_layout(sample_release, dest)
    return dest


@pytest.fixture(scope="module")
def hf_build(hf_copy: Path, tmp_path_factory: pytest.TempPathFactory):
    """The whole graph built from ``hf_copy`` with ``ILSVRC_SOURCE=huggingface`` (no boxes):
    (settings, results, failed)."""
    return build_in_new_instance(tmp_path_factory.mktemp("hf-build"), hf_copy, "huggingface")


def _records(path: Path) -> list[dict[str, bytes]]:
    """Each record of a TFRecord file: {feature key: the feature's serialized bytes}."""
    import tensorflow as tf

    found = []
    for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        feature = tf.train.Example.FromString(raw).features.feature
        found.append({key: feature[key].SerializeToString(deterministic=True) for key in feature})
    return found


def _without_boxes(records: list[dict[str, bytes]]) -> list[dict[str, bytes]]:
    return [{k: v for k, v in r.items() if not k.startswith("image/object/bbox/")} for r in records]


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file of the tree (the completeness marker of its publication left out: it has a time)."""
    return {name: path.read_bytes() for name, path in sorted(final_files(folder).items())}


def test_the_sample_in_the_hub_layout_builds_the_official_outputs_apart_from_boxes(
    hf_build, built_sample_graph, sample_release
):
    from ilsvrc_assets.bounding_boxes import NO_BOXES

    settings, results, failed = hf_build
    official, _, _, official_failed = built_sample_graph
    assert not official_failed
    # Nothing failed; the box check gives its visible warning that this copy has no boxes.
    assert not failed, failed
    from ilsvrc_assets_tests.helpers import evaluations

    boxes = evaluations(*results)["bounding_boxes:boxes_are_valid"]
    assert boxes.severity.value == "WARN" and NO_BOXES in boxes.description
    assert_synsets_as_official_but_the_devkit_ids(settings.synsets_csv, sample_release)
    assert settings.validation_labels_csv.read_bytes() == official.validation_labels_csv.read_bytes()
    assert _tree(settings.validation_dir) == _tree(official.validation_dir)
    names = [n for split in release.SPLITS for n in settings.shard_names(split)]
    for name in names:
        records = _records(settings.tfrecords_dir / name)
        assert _without_boxes(records) == _without_boxes(_records(official.tfrecords_dir / name)), name
        # Each record's box lists are there and empty (b"\x12\x00": a Feature with an empty float list).
        assert {record["image/object/bbox/xmin"] for record in records} <= {b"\x12\x00"}


def test_with_the_official_box_archives_the_shards_are_byte_identical(
    hf_build, built_sample_graph, sample_release, tmp_path
):
    """ILSVRC_BOXES_DIR names the sample's box archives: the box table is the official build's, and a
    shard of each split written from the hub layout is the official shard, byte for byte."""
    from ilsvrc_assets import archives, bounding_boxes, formats, shard_plan, shards, synsets
    from ilsvrc_assets.sources import from_settings

    settings, _, _ = hf_build
    official, _, _, _ = built_sample_graph
    with_boxes = make_settings(
        settings.data_dir, settings.local_dir, source="huggingface", boxes_dir=sample_release
    )
    source = from_settings(with_boxes)
    assert source.has_boxes() and {i.asset for i in source.inputs()} >= {"train_boxes_archive"}
    files = source.box_files(print)
    assert files is not None
    table = bounding_boxes.read_table(official.bounding_boxes_parquet)
    for split in release.SPLITS:
        name = settings.shard_names(split)[0]
        jobs = shard_plan.plan_split(
            split,
            archives.read_index(settings.image_index(split)),
            synsets.read_synsets(settings.synsets_csv),
            bounding_boxes.boxes_by_image(table[table["split"] == split]),
            source.image_reader(split, print),
            tmp_path,
            settings.num_shards[split],
            wanted=[name],
        )
        stats = shards.write_shard(jobs[name], formats.by_name(formats.DEFAULT))
        assert stats.path.read_bytes() == (official.tfrecords_dir / stats.path.name).read_bytes(), name


@pytest.fixture
def no_proxy(monkeypatch):
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def test_download_goes_through_the_hub_client_resumes_a_broken_transfer_and_uses_its_cache(
    hf_copy, tmp_path, no_proxy
):
    name = hf.VALIDATION_FILE
    size = (hf_copy / name).stat().st_size
    cache = tmp_path / "hub"
    with HubServer(hf_copy, hf.REPO_ID, TOKEN) as hub:
        # huggingface_hub writes what it receives in chunks of DOWNLOAD_CHUNK_SIZE (10 MB): cut after one.
        from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

        assert size > DOWNLOAD_CHUNK_SIZE
        hub.cut_once[name] = size - 1000
        path = hf.download(name, cache, TOKEN, hub.endpoint)
        assert path.read_bytes() == (hf_copy / name).read_bytes()
        # The transfer cut short was resumed from the last chunk written (a Range request), not restarted.
        gets = [(p, r) for method, p, r in hub.requests if method == "GET" and p.startswith("/cdn/")]
        assert [r for _, r in gets] == [None, f"bytes={DOWNLOAD_CHUNK_SIZE}-"]
        # The hub cache's snapshot layout, with the file a symlink into blobs/, is what the source reads.
        assert path.is_symlink() and hf.find_data_root(cache) == path.parent.parent
        assert hf.find_data_root(cache / hf.CACHE_FOLDER) == path.parent.parent
        # Fetched again: the cache has the hub's version, so nothing is transferred.
        hf.download(name, cache, TOKEN, hub.endpoint)
        assert len([1 for method, p, _ in hub.requests if method == "GET"]) == len(gets)
        version = hf.remote_version(name, TOKEN, hub.endpoint)
        assert hub.COMMIT in version and hub.sha[name] in version and str(size) in version
        # The gated repository refuses another token; the error says so and does not show it.
        with pytest.raises(Exception) as refused:
            hf.download(hf.TRAIN_FILES[0], tmp_path / "other", "hf_wrong-token", hub.endpoint)
        assert "401" in str(refused.value) or "gated" in str(refused.value).lower()
        # The token went to the hub only, never to the CDN host.
        assert {a for (_, p, _), a in zip(hub.requests, hub.authorizations) if p.startswith("/cdn/")} == {
            None
        }


# --- A copy made by hand, and damaged copies (the plain library) -----------------------------------


def write_gz_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A gzip-compressed tar written with the standard library only (not the project's writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as raw, tarfile.open(fileobj=raw, mode="w|") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def hand_made(tmp_path: Path):
    """A copy in the hub's layout with a few tiny images: (root, {official name: (wnid, bytes)})."""
    from ilsvrc_assets_tests.helpers import gray_jpeg

    root = tmp_path / "copy"
    wnids, labels = release.challenge_synsets(), release.validation_synsets()
    images: dict[str, tuple[str, bytes]] = {}
    for part, name in enumerate(hf.TRAIN_FILES):
        members = []
        for k in range(3):
            wnid = wnids[part * 200 + k]
            official = f"{wnid}_{10 * part + k}.JPEG"
            data = rgb_jpeg(20 + k, 12 + part) if k else gray_jpeg(16, 16 + part)
            images[official] = (wnid, data)
            members.append((f"{official[:-5]}_{wnid}.JPEG", data))
        write_gz_tar(root / name, members)
    members = []
    for number in (3, 1, 2, 40):
        official, wnid = release.validation_filename(number), labels[number - 1]
        images[official] = (wnid, rgb_jpeg(30, 10 + number))
        members.append((f"{official[:-5]}_{wnid}.JPEG", images[official][1]))
    write_gz_tar(root / hf.VALIDATION_FILE, members)
    return root, images


def test_a_hand_made_copy_gives_the_records_its_images_and_names_say(hand_made, tmp_path):
    import tensorflow as tf

    from ilsvrc_assets import formats, shard_plan, shards

    root, images = hand_made
    index_dir = tmp_path / "index"
    train = hf.index_train([root / n for n in hf.TRAIN_FILES], index_dir, release.challenge_synsets())
    validation = hf.index_validation(
        root / hf.VALIDATION_FILE, index_dir, release.validation_synsets(), "the shipped ground truth"
    )
    assert sorted(index_dir.iterdir()) == sorted(
        index_dir / f"{Path(n).name}.gzidx" for n in (*hf.TRAIN_FILES, hf.VALIDATION_FILE)
    )
    labels, texts = release.tf_labels(), release.synset_texts()
    table = __import__("pandas").DataFrame(
        {"wnid": list(labels), "label": list(labels.values()), "text": [texts[w] for w in labels]}
    )
    found = {}
    for split, index, parts in (
        ("train", train, hf.TRAIN_FILES),
        ("validation", validation, (hf.VALIDATION_FILE,)),
    ):
        reader = hf.GzipTarReader(tuple(root / n for n in parts), index_dir)
        jobs = shard_plan.plan_split(split, index, table, {}, reader, tmp_path / "out", 2)
        for job in jobs.values():
            shards.write_shard(job, formats.by_name(formats.DEFAULT))
            for raw in tf.data.TFRecordDataset(str(job.path)).as_numpy_iterator():
                feature = tf.train.Example.FromString(raw).features.feature
                found[feature["image/filename"].bytes_list.value[0].decode()] = feature
    assert sorted(found) == sorted(images)
    for official, (wnid, data) in images.items():
        feature = found[official]
        from PIL import Image

        with Image.open(io.BytesIO(data)) as picture:
            width, height = picture.size
        assert feature["image/class/synset"].bytes_list.value[0].decode() == wnid
        assert feature["image/class/label"].int64_list.value[0] == labels[wnid]
        assert feature["image/class/text"].bytes_list.value[0].decode() == texts[wnid]
        assert (feature["image/width"].int64_list.value[0], feature["image/height"].int64_list.value[0]) == (
            width,
            height,
        )
        assert feature["image/encoded"].bytes_list.value[0] == data  # JPEGs are stored as they are
        assert not feature["image/object/bbox/xmin"].float_list.value


def _refused(call, *named: str) -> str:
    with pytest.raises(ArchiveError) as caught:
        call()
    message = str(caught.value)
    for text in named:
        assert text in message, message
    return message


def test_damaged_copies_fail_naming_the_file_and_write_nothing(hand_made, tmp_path):
    root, _ = hand_made
    index_dir = tmp_path / "index"
    wnid = release.challenge_synsets()[0]
    parts = [root / n for n in hf.TRAIN_FILES]

    def train(*paths: Path):
        return lambda: hf.index_train(list(paths), index_dir, release.challenge_synsets())

    # A truncated gzip: cut in the middle of the compressed stream.
    cut = tmp_path / "cut" / "train_images_0.tar.gz"
    cut.parent.mkdir()
    cut.write_bytes(parts[0].read_bytes()[: parts[0].stat().st_size // 2])
    _refused(train(cut), str(cut), "truncated")
    # A member naming a WNID that is not one of the 1,000.
    unknown = write_gz_tar(tmp_path / "unknown" / "t.tar.gz", [("n99999999_1_n99999999.JPEG", rgb_jpeg())])
    _refused(train(unknown), str(unknown), "n99999999_1_n99999999.JPEG", "not one of the 1,000")
    # A member whose suffix is not the synset its name says.
    other = release.challenge_synsets()[1]
    mixed = write_gz_tar(tmp_path / "mixed" / "t.tar.gz", [(f"{wnid}_1_{other}.JPEG", rgb_jpeg())])
    _refused(train(mixed), str(mixed), f"{wnid}_1_{other}.JPEG")
    # The same image twice, across two files.
    twice = write_gz_tar(tmp_path / "twice" / "t.tar.gz", [(f"{wnid}_0_{wnid}.JPEG", rgb_jpeg())])
    _refused(train(parts[0], twice), str(twice), "appears twice", parts[0].name)
    # A member path leaving the archive.
    escaping = write_gz_tar(tmp_path / "escaping" / "t.tar.gz", [(f"../{wnid}_5_{wnid}.JPEG", rgb_jpeg())])
    _refused(train(escaping), str(escaping), "outside the archive")
    # A validation image whose suffix contradicts the ground truth.
    labels = release.validation_synsets()
    wrong = next(w for w in release.challenge_synsets() if w != labels[0])
    val = write_gz_tar(tmp_path / "val" / "v.tar.gz", [(f"ILSVRC2012_val_00000001_{wrong}.JPEG", rgb_jpeg())])
    _refused(
        lambda: hf.index_validation(val, index_dir, labels, "the shipped ground truth"),
        str(val),
        f"labelled {wrong}",
        labels[0],
    )
    # Nothing was written for a file that failed: no seek-point index, no partial file (the one
    # index there is that of the intact first file, read before its duplicate was found).
    assert [p.name for p in index_dir.iterdir()] == [f"{parts[0].name}.gzidx"]


def test_a_seek_point_index_reads_any_member_of_a_large_stream(tmp_path):
    """Several seek points (a stream of a few MiB), points inside a byte among them: every member
    read through the index equals its bytes."""
    import numpy as np

    rng = np.random.default_rng(3)  # 8 letters at random: Huffman-coded blocks, starting anywhere in a byte
    members = [
        (f"m{i}", rng.integers(97, 105, int(rng.integers(1, 200_000)), np.uint8).tobytes()) for i in range(60)
    ]
    gz = write_gz_tar(tmp_path / "big.tar.gz", members)
    listed = []
    gzip_index.index_gzip_tar(gz, tmp_path / "big.gzidx", listed.append)
    assert [m.name for m in listed] == [name for name, _ in members]
    expected = {m.offset: data for m, (_, data) in zip(listed, members)}
    with gzip_index.GzipIndex(gz, tmp_path / "big.gzidx") as index:
        points = len(index._points.compressed)
        assert points > 3 and any(index._points.bits)
        started = []
        start_at = index._start_at
        index._start_at = lambda i: started.append(i) or start_at(i)
        # In archive order (a tree, a run of members): one pass, a decompression started at most
        # once per seek point, where it is cheaper than going on.
        for member in listed:
            assert index.read(member.offset, member.size) == expected[member.offset]
        assert len(started) <= points + 1, started
        # Backwards and at random: each read from the nearest point before it.
        order = list(reversed(listed)) + [listed[i] for i in rng.permutation(len(listed))]
        for member in order:
            assert index.read(member.offset, member.size) == expected[member.offset], member.name
        # Part of a member, and past the end of the stream.
        last = listed[-1]
        assert index.read(last.offset + 5, 10) == expected[last.offset][5:15]
        assert index.read(last.offset + last.size + 10_000_000, 10) == b""
