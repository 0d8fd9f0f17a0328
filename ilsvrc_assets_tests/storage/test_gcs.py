"""The gs:// store against gcp-storage-emulator on loopback (a real HTTP server; google-cloud-storage
unmocked): uploads of one request and through a resumable session, damaged bytes before and in
transit, a dropped connection mid-upload, and the OutputStore methods.

The emulator does not enforce ``ifGenerationMatch`` (a second create succeeds), so the tests of
conditions run only against a server that does: the fixture finds out once, and skips them saying
so. The conditions themselves are shown against moto in ``test_s3.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ilsvrc_assets.storage import gcs
from ilsvrc_assets.storage.gcs import GCSStore
from ilsvrc_assets.storage.objects import ChecksumMismatch, ObjectConflict, ObjectStoreError
from ilsvrc_assets_tests import object_servers
from ilsvrc_assets_tests.object_servers import DroppingProxy, damage, write_file

gcs_emulator = object_servers.gcs_emulator  # the module's server (a fixture)

KiB, MiB = 1024, 1024 * 1024
CHUNK = 256 * KiB  # the smallest chunk GCS takes: a resumable upload of many chunks stays fast
RESUMABLE = gcs.SINGLE_REQUEST + 3 * CHUNK + 17  # over 8 MiB: a resumable session of 36 chunks
BUCKET = "ilsvrc-test"


@pytest.fixture(scope="module")
def bucket(gcs_emulator) -> str:
    gcs_emulator.make_bucket(BUCKET)
    return f"gs://{BUCKET}"


@pytest.fixture(scope="module")
def enforces_preconditions(bucket) -> bool:
    """Whether the server refuses a second create under ``ifGenerationMatch=0`` (GCS does; the
    emulator, as of 2026.7, does not)."""
    blob = gcs.client().bucket(BUCKET).blob("probe/if-generation-match")
    blob.upload_from_string(b"first", if_generation_match=0)
    try:
        gcs.client().bucket(BUCKET).blob(blob.name).upload_from_string(b"second", if_generation_match=0)
    except gcs.api.PreconditionFailed:
        return True
    return False


@pytest.fixture
def conditions(enforces_preconditions) -> None:
    if not enforces_preconditions:
        pytest.skip(
            "gcp-storage-emulator ignores ifGenerationMatch (a second create succeeds): conditional "
            "writes cannot be shown against it (they are, against moto, in test_s3.py)"
        )


@pytest.fixture
def prefix(bucket, request) -> str:
    return f"{bucket}/{request.node.name.replace('[', '-').rstrip(']')}"


@pytest.fixture
def store(tmp_path, gcs_emulator) -> GCSStore:
    """A store talking to the module's server (its variables set: a test that asks for no bucket,
    run first in the module, would otherwise find no server and no credentials)."""
    return GCSStore(tmp_path / "scratch", chunk_size=CHUNK)


@pytest.mark.parametrize("size", [0, 1000, gcs.SINGLE_REQUEST, RESUMABLE])
def test_upload_reads_back_identical(store, prefix, tmp_path, size):
    local, md5 = write_file(tmp_path / "local.bin", size, seed=size)
    url = f"{prefix}/shard.tfrecord"
    made = store.upload_file(local, url, md5)

    assert (made.url, made.size, made.md5) == (url, size, md5)
    assert made.version.isdigit() and made.etag  # the generation; the CRC32C
    assert made.writer.startswith(f"{os.uname().nodename} pid {os.getpid()} at ")
    assert store.info(url) == made
    assert store.read_bytes(url) == local.read_bytes()
    with store.open_read(url) as f:
        assert b"".join(iter(lambda: f.read(100 * KiB), b"")) == local.read_bytes()
    assert list(store.listing(prefix + "/")) == [made]


def test_missing_objects(store, prefix):
    assert store.info(f"{prefix}/nothing") is None
    with pytest.raises(FileNotFoundError, match="nothing"):
        store.read_bytes(f"{prefix}/nothing")
    with pytest.raises(FileNotFoundError, match="nothing"), store.open_read(f"{prefix}/nothing"):
        pass
    store.remove(f"{prefix}/nothing")  # fine
    assert list(store.listing(f"{prefix}/")) == []


@pytest.mark.usefixtures("conditions")
@pytest.mark.parametrize("size", [1000, RESUMABLE])
def test_second_writer_is_refused_and_named_the_winner(store, prefix, tmp_path, size):
    first, md5 = write_file(tmp_path / "first", size, seed=1)
    second, other_md5 = write_file(tmp_path / "second", size, seed=2)
    url = f"{prefix}/x.tfrecord"
    winner = store.upload_file(first, url, md5)
    with pytest.raises(ObjectConflict) as refused:
        GCSStore(tmp_path / "other", chunk_size=CHUNK).upload_file(second, url, other_md5)
    message = str(refused.value)
    assert url in message and winner.writer in message and winner.version in message
    assert store.read_bytes(url) == first.read_bytes()


@pytest.mark.usefixtures("conditions")
def test_replace_only_the_version_seen(store, prefix):
    url = f"{prefix}/manifest.json"
    v1 = store.put_bytes(url, b"one")
    store.put_bytes(url, b"two", replace=v1.version)
    with pytest.raises(
        ObjectConflict, match=f"no longer version {v1.version}, which this upload was to replace"
    ):
        store.put_bytes(url, b"three", replace=v1.version)
    assert store.read_bytes(url) == b"two"


def test_the_condition_goes_on_the_wire(store, prefix, tmp_path, gcs_emulator, monkeypatch):
    """What the emulator can show: a create asks ifGenerationMatch=0 (one request, and the start of a
    session), a replacement the generation it replaces, an overwrite nothing; the emulator grants all."""
    url = f"{prefix}/x"
    big, md5 = write_file(tmp_path / "big", RESUMABLE)
    with DroppingProxy(gcs_emulator.port) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
        v1 = store.put_bytes(url, b"one")
        v2 = store.put_bytes(url, b"two", replace=v1.version)
        v3 = store.put_bytes(url, b"three", overwrite=True)
        store.upload_file(big, f"{prefix}/big", md5)
    uploads = [line for line in proxy.request_lines if line.startswith("POST /upload/")]
    assert "uploadType=multipart" in uploads[0] and "ifGenerationMatch=0" in uploads[0]
    assert f"ifGenerationMatch={v1.version}" in uploads[1]
    assert "ifGenerationMatch" not in uploads[2]
    assert "uploadType=resumable" in uploads[3] and "ifGenerationMatch=0" in uploads[3]
    assert len(uploads) == 4 and len({v1.version, v2.version, v3.version}) == 3


@pytest.mark.parametrize("size, offset", [(1000, 500), (RESUMABLE, 7), (RESUMABLE, RESUMABLE - 1)])
def test_damaged_local_file_is_not_published(store, prefix, tmp_path, size, offset):
    local, md5 = write_file(tmp_path / "local", size)
    damage(local, offset)
    url = f"{prefix}/x.tfrecord"
    with pytest.raises(ChecksumMismatch, match=f"{url}: the local file .* its writer computed {md5}"):
        store.upload_file(local, url, md5)
    assert store.info(url) is None


@pytest.mark.parametrize("size, offset", [(2 * MiB, MiB), (RESUMABLE, 100 * KiB)])
def test_bytes_damaged_in_transit_are_refused(
    store, prefix, tmp_path, gcs_emulator, monkeypatch, size, offset
):
    """The declared MD5 makes the server refuse the object (a resumable session: at its last chunk)."""
    local, md5 = write_file(tmp_path / "local", size)
    url = f"{prefix}/x.tfrecord"
    with DroppingProxy(gcs_emulator.port, corrupt_after_bytes=offset) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
        with pytest.raises(
            ChecksumMismatch, match=f"{url}: .*damaged on the way; the object was not published"
        ):
            store.upload_file(local, url, md5)
        assert proxy.corrupted == 1
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    assert store.info(url) is None


@pytest.mark.parametrize("size, drop_at", [(2 * MiB, MiB), (RESUMABLE, 100 * KiB)])
def test_dropped_connection_is_resumed(store, prefix, tmp_path, gcs_emulator, monkeypatch, size, drop_at):
    """A connection cut mid-request: one request is retried whole; a session asks the server how much
    it has (the emulator keeps the cut chunk's first bytes) and goes on from there."""
    local, md5 = write_file(tmp_path / "local", size)
    url = f"{prefix}/x.tfrecord"
    with DroppingProxy(gcs_emulator.port, drop_after_bytes=drop_at) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
        made = store.upload_file(local, url, md5)
        assert proxy.dropped == 1
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    assert made.md5 == md5 and store.read_bytes(url) == local.read_bytes()
    assert list(store.listing(prefix + "/")) == [store.info(url)] == [made]


def test_output_store_methods_publish_only_on_success(store, prefix):
    object_servers.check_publishes_only_on_success(store, prefix)
    assert store.remove_partial(prefix) == 0  # a session is never an object


def test_missing_extra_names_it():
    """Without google-cloud-storage the package imports, and asking for a gs:// store says what to install."""
    code = (
        "import sys; sys.modules['google.cloud.storage'] = None\n"
        "from ilsvrc_assets.storage import store_for\n"
        "try:\n    store_for('gs://bucket/x')\nexcept ImportError as e:\n    print(e)\n"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install 'ilsvrc-assets[gcs]'" in shown.stdout, shown.stderr


def test_missing_bucket_names_the_fix(store, tmp_path):
    local, md5 = write_file(tmp_path / "local", 10)
    with pytest.raises(ObjectStoreError, match="bucket no-such-bucket does not exist .*ILSVRC_OUTPUT_URL"):
        store.upload_file(local, "gs://no-such-bucket/x", md5)


def test_a_forked_child_makes_its_own_client(store, prefix):
    parent = gcs.client()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            assert gcs.client() is not parent
            store.put_bytes(f"{prefix}/from-child", b"child")
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert gcs.client() is parent and store.read_bytes(f"{prefix}/from-child") == b"child"
