"""Publishing to a bucket (``ILSVRC_OUTPUT_URL``): the sample built with its TFRecords and tables also
published to S3 (moto in server mode) and to GCS (gcp-storage-emulator), both real servers on
loopback, started here. Every object is the local build's file of the same name, byte for byte; the
TFRecords read back from the bucket parse with TensorFlow; a second publish uploads nothing; a
publish of a tree killed mid-way leaves no partial object and the next one finishes it; an object
changed in the bucket is named by the check; another deployment cannot overwrite this one's
objects; no credential reaches the run history.

The sample's validation tree (50,000 objects) is left out of the builds here (``bucket_outputs``):
these servers take about 130 uploads a second, so it alone would take six minutes each. Trees are
published by the same code as the shards; the killed-publish test publishes one of 600 files.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ilsvrc_assets import archives, bucket, release, storage, versions
from ilsvrc_assets.definitions import JOB_NAMES
from ilsvrc_assets.record_workers import RecordWorkers
from ilsvrc_assets.shard_scan import ALL
from ilsvrc_assets.storage.objects import ObjectConflict
from ilsvrc_assets_tests.helpers import build_all, evaluations, make_settings, records_by_tensorflow, run_job
from ilsvrc_assets_tests.object_servers import environment, gcs_emulator, moto_server

moto_server = moto_server  # the servers' fixtures, for this module
gcs_emulator = gcs_emulator

pytestmark = pytest.mark.long(seconds=200)  # conftest: the long files start first

# moto takes any credentials: these are searched for in the run history afterwards.
SECRET_KEY = "aws-secret-Qx93-never-shown"

# What the builds here publish to the bucket, and the tables beside them.
OUTPUTS = ("tfrecords",)
TABLES = (
    "synsets.csv",
    "validation_labels.csv",
    "bounding_boxes.parquet",
    "imagenet_2012_bounding_boxes.csv",
    "imagenet_2012_validation_bounding_boxes.csv",
)


@pytest.fixture(scope="module", params=["s3", "gs"])
def built(request, sample_release, tmp_path_factory):
    """(settings, store, instance home) of the sample built with ILSVRC_OUTPUT_URL on the server of
    the parameter's protocol."""
    from dagster import DagsterInstance

    server = request.getfixturevalue("moto_server" if request.param == "s3" else "gcs_emulator")
    name = f"ilsvrc-{request.param}-build"
    server.make_bucket(name)
    root = tmp_path_factory.mktemp(f"bucket-{request.param}")
    settings = make_settings(
        root / "data",
        None,
        source="sample",
        sample_dir=sample_release,
        output_url=f"{request.param}://{name}/imagenet",
        bucket_outputs=OUTPUTS,
    )
    (root / "home").mkdir()
    secret = {"AWS_SECRET_ACCESS_KEY": SECRET_KEY} if request.param == "s3" else {}
    with environment(secret), DagsterInstance.local_temp(str(root / "home")) as instance:
        _, failed = build_all(settings, instance)
    assert failed == [], failed
    return settings, storage.store_for(settings.output_url), root / "home"


def local_files(settings) -> dict[str, Path]:
    """Relative path -> file of everything the build published locally (markers included)."""
    found = {name: settings.data_dir / name for name in TABLES}
    for output in OUTPUTS:
        for folder in versions.OUTPUTS[output].folders:
            top = (settings.data_dir / folder).resolve()
            for path in top.rglob("*"):
                if path.is_file():
                    found[f"{folder}/{path.relative_to(top).as_posix()}"] = path
    return found


def test_every_object_is_the_local_file_byte_for_byte(built):
    settings, store, _ = built
    files = local_files(settings)
    objects = {
        info.url[len(settings.output_url) + 1 :]: info for info in store.listing(settings.output_url + "/")
    }
    assert sorted(objects) == sorted(files)
    assert len([p for p in objects if "-of-" in p]) == 2 * sum(settings.num_shards.values())  # and indexes
    for relative, path in files.items():
        assert objects[relative].size == path.stat().st_size, relative
        assert store.read_bytes(bucket.join(settings.output_url, relative)) == path.read_bytes(), relative
    for output in OUTPUTS:
        assert bucket.output_problems(settings, output) == []


def test_the_tfrecords_read_back_from_the_bucket_parse_with_tensorflow(built, tmp_path):
    settings, store, _ = built
    shards = sorted(
        u.url for u in store.listing(bucket.join(settings.output_url, "tfrecords") + "/") if "-of-" in u.url
    )
    assert len(shards) == sum(settings.num_shards.values())
    copies = []
    for url in shards:  # streamed from the bucket
        copy = tmp_path / url.rsplit("/", 1)[1]
        with store.open_read(url) as f, open(copy, "wb") as out:
            while chunk := f.read(1 << 20):
                out.write(chunk)
        copies.append(copy)
    records = records_by_tensorflow(copies)
    expected = sum(len(archives.read_index(settings.image_index(split))) for split in release.SPLITS)
    assert len(records) == expected


def test_a_second_publish_uploads_nothing(built):
    settings, _, _ = built
    for output in OUTPUTS:
        done = bucket.publish_output(settings, output)
        assert (done.uploaded, done.removed) == (0, 0)


def published_tree(settings, files: int, salt: bytes = b"") -> dict[str, bytes]:
    """A validation tree of ``files`` small files, published locally: relative path -> bytes (the
    first file's with ``salt`` at its end)."""
    written = {}
    with versions.writing(settings, "validation") as folder:
        for i in range(files):
            relative = f"n{i % 7:08d}/ILSVRC2012_val_{i + 1:08d}.JPEG"
            written[f"validation/{relative}"] = data = i.to_bytes(4, "big") * (50 + i % 300) + (
                salt if i == 0 else b""
            )
            (folder / relative).parent.mkdir(exist_ok=True)
            (folder / relative).write_bytes(data)
    versions.publish(settings, "validation_tree")
    return written


def test_a_publish_killed_midway_leaves_no_partial_object_and_the_next_one_finishes(built, tmp_path):
    _, store, _ = built
    settings = make_settings(
        tmp_path / "data", None, output_url=built[0].output_url.replace("/imagenet", "/killed"), workers=1
    )
    files = published_tree(settings, 600)
    prefix = bucket.join(settings.output_url, "validation") + "/"
    # A publish in a process of its own, killed once 200 objects are up.
    script = (
        "import sys, pickle; from ilsvrc_assets import bucket; "
        "bucket.publish_output(pickle.loads(bytes.fromhex(sys.argv[1])), 'validation_tree')"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, pickle.dumps(settings).hex()],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while sum(1 for _ in store.listing(prefix)) < 200:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    up = {info.url[len(settings.output_url) + 1 :]: info for info in store.listing(prefix)}
    assert 200 <= len(up) < len(files)
    assert f"validation/{versions.MARKER}" not in up  # not a published copy
    for relative, info in up.items():  # every object there is whole
        assert store.read_bytes(bucket.join(settings.output_url, relative)) == files[relative], relative
    problems = bucket.output_problems(settings, "validation_tree")
    assert any("missing (the bucket's copy is not a published one)" in p for p in problems), problems

    done = bucket.publish_output(settings, "validation_tree")
    assert done.uploaded <= len(files) - len(up) + 16  # only what was missing (and what was in flight)
    assert bucket.output_problems(settings, "validation_tree") == []
    after = {info.url[len(settings.output_url) + 1 :] for info in store.listing(prefix)}
    assert after == set(files) | {f"validation/{m}" for m in versions.MARKER_FILES}
    for relative, data in files.items():
        assert store.read_bytes(bucket.join(settings.output_url, relative)) == data, relative


def test_another_deployment_cannot_overwrite_this_ones_objects(built, tmp_path):
    first, store, _ = built
    url = first.output_url.replace("/imagenet", "/shared")
    mine = make_settings(tmp_path / "mine", None, output_url=url)
    theirs = make_settings(tmp_path / "theirs", None, output_url=url)
    published_tree(mine, 20)
    bucket.publish_output(mine, "validation_tree")
    published_tree(theirs, 21, salt=b"theirs")  # the same 20 files but the first, and one more
    with pytest.raises(ObjectConflict, match="ILSVRC2012_val_00000001.JPEG: written by .* pid"):
        bucket.publish_output(theirs, "validation_tree")
    assert bucket.output_problems(mine, "validation_tree") == []  # untouched, marker and all


def test_an_object_changed_in_the_bucket_is_named_and_not_overwritten(built):
    settings, store, _ = built
    shard = release.shard_name("validation", 0, settings.num_shards["validation"])
    url = bucket.join(settings.output_url, f"tfrecords/{shard}")
    original = store.read_bytes(url)
    store.put_bytes(url, original[:-1] + bytes([original[-1] ^ 1]), overwrite=True)
    try:
        problems = bucket.output_problems(settings, "tfrecords")
        assert any(url in p for p in problems), problems
        # Not the object this deployment wrote: publishing again is refused, naming who wrote it,
        # before anything in the bucket changes.
        with pytest.raises(ObjectConflict, match=shard):
            bucket.publish_output(settings, "tfrecords")
        assert store.info(bucket.join(settings.output_url, f"tfrecords/{versions.MARKER}")) is not None
    finally:
        store.remove(url)
    bucket.publish_output(settings, "tfrecords")
    assert bucket.output_problems(settings, "tfrecords") == []
    assert store.read_bytes(url) == original


def test_no_credential_reaches_the_run_history(built):
    settings, _, home = built
    if not settings.output_url.startswith("s3://"):
        pytest.skip("the GCS emulator takes no credentials")
    for path in home.rglob("*"):
        if path.is_file():
            assert SECRET_KEY.encode() not in path.read_bytes(), path


def test_the_audit_reads_the_shards_back_from_the_bucket(built):
    settings, store, _ = built
    shard = release.shard_name("train", 1, settings.num_shards["train"])
    url = bucket.join(settings.output_url, f"tfrecords/{shard}")
    with RecordWorkers(1) as workers:
        assert bucket.read_back_problems(settings, "tfrecords", workers, ALL) == (
            [],
            len(shards_of(settings)),
        )
        original = store.read_bytes(url)
        middle = len(original) // 2  # inside an image: the record's CRC no longer matches
        store.put_bytes(
            url, original[:middle] + bytes([original[middle] ^ 0xFF]) + original[middle + 1 :], overwrite=True
        )
        try:
            problems, _ = bucket.read_back_problems(settings, "tfrecords", workers, ALL)
        finally:
            store.remove(url)
            bucket.publish_output(settings, "tfrecords")
    assert len(problems) == 1 and problems[0].startswith(f"{url}: MD5"), problems
    assert bucket.output_problems(settings, "tfrecords") == []


def shards_of(settings) -> list[str]:
    return [name for split in release.SPLITS for name in settings.shard_names(split)]


def test_the_audit_job_reads_the_bucket_back_and_names_an_object_changed_there(built):
    from dagster import DagsterInstance

    settings, store, home = built
    check = "published_tfrecords:matches_its_listing"
    with DagsterInstance.local_temp(str(home)) as instance:
        found = evaluations(run_job(settings, instance, JOB_NAMES["audit"]))
        assert found[check].passed, found[check].description
        assert found[check].metadata["bucket_shards_read_back"].value == len(shards_of(settings))

        url = bucket.join(settings.output_url, f"tfrecords/{shards_of(settings)[0]}")
        original = store.read_bytes(url)
        store.put_bytes(url, original[:-1] + bytes([original[-1] ^ 1]), overwrite=True)
        try:
            found = evaluations(run_job(settings, instance, JOB_NAMES["audit"]))
        finally:
            store.remove(url)
            bucket.publish_output(settings, "tfrecords")
    assert not found[check].passed
    assert f"{url}: MD5 " in found[check].description  # named, with what to do
    assert "materialise published_tfrecords" in found[check].description


def test_a_changed_table_replaces_its_object_and_an_unchanged_one_is_left(built):
    settings, store, _ = built
    table, other = settings.synsets_csv, settings.validation_labels_csv
    url = bucket.join(settings.output_url, table.name)
    before = table.read_bytes()
    table.write_bytes(before + b"# changed\n")
    try:
        done = bucket.publish_files(settings, [table, other])
        assert (done.objects, done.uploaded) == (2, 1)
        assert store.read_bytes(url) == table.read_bytes()
    finally:
        table.write_bytes(before)
        bucket.publish_files(settings, [table])
    assert store.read_bytes(url) == before
    assert store.read_bytes(bucket.join(settings.output_url, other.name)) == other.read_bytes()
