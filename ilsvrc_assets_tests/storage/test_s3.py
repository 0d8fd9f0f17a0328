"""The s3:// store against moto's S3 server on loopback (a real HTTP server; boto3 unmocked): uploads
of one request and multipart, conditions and the winner they name, damaged bytes before and in
transit, a dropped connection, a writer killed mid-upload and run again, and the OutputStore methods."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ilsvrc_assets.storage import s3
from ilsvrc_assets.storage.objects import ChecksumMismatch, ObjectConflict, ObjectStoreError, split_url
from ilsvrc_assets.storage.s3 import S3Store
from ilsvrc_assets_tests import object_servers
from ilsvrc_assets_tests.object_servers import DroppingProxy, damage, write_file

moto_server = object_servers.moto_server  # the module's server (a fixture)

MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest part: multipart uploads of a few parts stay fast
BUCKET = "ilsvrc-test"


@pytest.fixture(scope="module")
def bucket(moto_server) -> str:
    moto_server.make_bucket(BUCKET)
    return f"s3://{BUCKET}"


@pytest.fixture
def prefix(bucket, request) -> str:
    """A folder of its own for each test."""
    return f"{bucket}/{request.node.name.replace('[', '-').rstrip(']')}"


@pytest.fixture
def store(tmp_path, moto_server) -> S3Store:
    """A store talking to the module's server (its variables set: a test that asks for no bucket,
    run first in the module, would otherwise find no server and no credentials)."""
    return S3Store(tmp_path / "scratch", part_size=PART)


def unfinished_uploads(url_prefix: str) -> list[dict]:
    bucket, prefix = split_url(url_prefix)
    return s3.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])


@pytest.mark.parametrize("size, parts", [(0, 0), (1000, 0), (PART, 0), (2 * PART + 123, 3)])
def test_upload_reads_back_identical(store, prefix, tmp_path, size, parts):
    local, md5 = write_file(tmp_path / "local.bin", size, seed=size)
    url = f"{prefix}/shard.tfrecord"
    made = store.upload_file(local, url, md5)

    assert (made.url, made.size) == (url, size)
    assert made.writer.startswith(f"{os.uname().nodename} pid {os.getpid()} at ")
    if parts:  # multipart: the ETag is the MD5 of the parts' MD5s, and no MD5 of the whole
        assert made.md5 is None and made.etag.endswith(f"-{parts}")
    else:
        assert made.md5 == md5 == made.version == made.etag
    assert store.info(url) == made
    assert store.read_bytes(url) == local.read_bytes()
    with store.open_read(url) as f:
        assert b"".join(iter(lambda: f.read(MiB), b"")) == local.read_bytes()
    listed = list(store.listing(prefix + "/"))
    assert [(i.url, i.size, i.version) for i in listed] == [(url, size, made.version)]
    assert not unfinished_uploads(prefix + "/")
    assert not list((store.scratch / ".uploads").glob("*.json")), "resume state left behind"


def test_missing_objects(store, prefix):
    assert store.info(f"{prefix}/nothing") is None
    with pytest.raises(FileNotFoundError, match="nothing"):
        store.read_bytes(f"{prefix}/nothing")
    store.remove(f"{prefix}/nothing")  # fine
    assert list(store.listing(f"{prefix}/")) == []


@pytest.mark.parametrize("size", [1000, 2 * PART + 1])
def test_second_writer_is_refused_and_named_the_winner(store, prefix, tmp_path, size):
    first, md5 = write_file(tmp_path / "first", size, seed=1)
    second, other_md5 = write_file(tmp_path / "second", size, seed=2)
    url = f"{prefix}/x.tfrecord"
    winner = store.upload_file(first, url, md5)

    with pytest.raises(ObjectConflict) as refused:
        S3Store(tmp_path / "other-scratch", part_size=PART).upload_file(second, url, other_md5)
    message = str(refused.value)
    assert url in message and winner.writer in message and winner.version in message
    assert "not published" in message
    assert store.read_bytes(url) == first.read_bytes()
    assert not unfinished_uploads(prefix + "/")


def test_multipart_completion_is_conditional(store, prefix, tmp_path):
    """Another writer publishes while our parts are on their way: the completion (If-None-Match) is
    refused, names it, and our upload is aborted."""
    local, md5 = write_file(tmp_path / "local", 2 * PART + 1, seed=3)
    url = f"{prefix}/x.tfrecord"
    rival = S3Store(tmp_path / "rival", part_size=PART)

    def publish_meanwhile(_url, part, _parts):
        if part == 1:
            rival.put_bytes(url, b"the rival's")

    racing = S3Store(tmp_path / "scratch", part_size=PART, on_part=publish_meanwhile)
    with pytest.raises(ObjectConflict, match="another writer published it first"):
        racing.upload_file(local, url, md5)
    assert store.read_bytes(url) == b"the rival's"
    assert not unfinished_uploads(prefix + "/")


def test_replace_only_the_version_seen(store, prefix, tmp_path):
    url = f"{prefix}/manifest.json"
    v1 = store.put_bytes(url, b"one")
    v2 = store.put_bytes(url, b"two", replace=v1.version)
    assert store.read_bytes(url) == b"two"

    with pytest.raises(
        ObjectConflict, match=f"no longer version {v1.version}, which this upload was to replace"
    ):
        store.put_bytes(url, b"three", replace=v1.version)  # stale: v2 is there now
    big, md5 = write_file(tmp_path / "big", 2 * PART + 1)
    with pytest.raises(ObjectConflict, match=v2.version):
        store.upload_file(big, url, md5, replace=v1.version)
    assert store.read_bytes(url) == b"two"

    v3 = store.upload_file(big, url, md5, replace=v2.version)
    assert store.read_bytes(url) == big.read_bytes() and v3.version != v2.version
    assert store.put_bytes(url, b"four", overwrite=True).version != v3.version  # unconditional
    with pytest.raises(ObjectConflict, match="no longer exists"):
        store.put_bytes(f"{prefix}/gone", b"x", replace=v1.version)


def test_retried_create_that_had_succeeded_is_ours(store, prefix):
    """A PutObject retried after its answer was lost finds the object there: its own, not a conflict."""
    url = f"{prefix}/x"
    first = store._put(url, b"data", "8d777f385d3dfec8815d20f7496026dc", None, False, "host pid 1 at t")
    again = store._put(url, b"data", "8d777f385d3dfec8815d20f7496026dc", None, False, "host pid 1 at t")
    assert again == first
    with pytest.raises(ObjectConflict):
        store._put(url, b"data", "8d777f385d3dfec8815d20f7496026dc", None, False, "host pid 2 at t")


@pytest.mark.parametrize("size, offset", [(1000, 500), (3 * PART, 2 * PART + 7), (3 * PART, 7)])
def test_damaged_local_file_is_not_published(store, prefix, tmp_path, size, offset):
    local, md5 = write_file(tmp_path / "local", size)
    damage(local, offset)
    url = f"{prefix}/x.tfrecord"
    with pytest.raises(ChecksumMismatch, match=f"{url}: the local file .* its writer computed {md5}"):
        store.upload_file(local, url, md5)
    assert store.info(url) is None
    assert not unfinished_uploads(prefix + "/")


@pytest.mark.parametrize("size", [2 * MiB, 2 * PART + 1])
def test_bytes_damaged_in_transit_are_removed(store, prefix, tmp_path, moto_server, monkeypatch, size):
    """moto does not check Content-MD5 (real S3 answers BadDigest): the ETag check catches it."""
    local, md5 = write_file(tmp_path / "local", size)
    url = f"{prefix}/x.tfrecord"
    with DroppingProxy(moto_server.port, corrupt_after_bytes=MiB) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        with pytest.raises(ChecksumMismatch, match=f"{url}: the store reports"):
            store.upload_file(local, url, md5)
        assert proxy.corrupted == 1
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint)
    assert store.info(url) is None
    assert not unfinished_uploads(prefix + "/")


@pytest.mark.parametrize("size, drop_at", [(2 * MiB, MiB), (3 * PART, 3 * MiB)])
def test_dropped_connection_is_retried(store, prefix, tmp_path, moto_server, monkeypatch, size, drop_at):
    local, md5 = write_file(tmp_path / "local", size)
    url = f"{prefix}/x.tfrecord"
    with DroppingProxy(moto_server.port, drop_after_bytes=drop_at) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        made = store.upload_file(local, url, md5)
        assert proxy.dropped == 1 and proxy.connections >= 2
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint)
    assert store.read_bytes(url) == local.read_bytes()
    assert [i.url for i in store.listing(prefix + "/")] == [url] and store.info(url) == made
    assert not unfinished_uploads(prefix + "/")


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from ilsvrc_assets.storage.s3 import S3Store

    scratch, local, url, md5 = sys.argv[1:]

    def killed_after_two(url, part, parts):
        if part == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    S3Store(scratch, part_size=5 * 1024 * 1024, on_part=killed_after_two).upload_file(Path(local), url, md5)
    """
)


def test_killed_multipart_upload_resumes(store, prefix, tmp_path):
    """A writer killed (SIGKILL) after two of four parts: nothing is visible; the next run continues the
    same upload, sending only the last two parts."""
    local, md5 = write_file(tmp_path / "local", 3 * PART + 100)
    url = f"{prefix}/x.tfrecord"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(store.scratch), str(local), url, md5],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    assert store.info(url) is None and list(store.listing(prefix + "/")) == []
    (state_file,) = (store.scratch / ".uploads").glob("*.json")
    state = json.loads(state_file.read_text())
    assert sorted(state["parts"]) == ["1", "2"]
    assert [u["UploadId"] for u in unfinished_uploads(prefix + "/")] == [state["upload_id"]]

    sent = []
    again = S3Store(store.scratch, part_size=PART, on_part=lambda url, part, parts: sent.append(part))
    made = again.upload_file(local, url, md5)
    assert sent == [3, 4]
    assert made.etag.endswith("-4") and store.read_bytes(url) == local.read_bytes()
    assert not unfinished_uploads(prefix + "/") and not state_file.exists()


def test_resume_state_of_another_file_is_abandoned(store, prefix, tmp_path):
    """A different file for the same URL does not continue the killed upload of the old one."""
    local, md5 = write_file(tmp_path / "local", 2 * PART + 1, seed=1)
    url = f"{prefix}/x.tfrecord"

    def interrupted(_url, part, _parts):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        S3Store(store.scratch, part_size=PART, on_part=interrupted).upload_file(local, url, md5)
    (old,) = unfinished_uploads(prefix + "/")

    changed, changed_md5 = write_file(local, 2 * PART + 1, seed=2)
    store.upload_file(changed, url, changed_md5)
    assert store.read_bytes(url) == changed.read_bytes()
    assert old["UploadId"] not in [u["UploadId"] for u in unfinished_uploads(prefix + "/")]


def test_remove_partial_aborts_what_nobody_will_finish(store, prefix, tmp_path):
    bucket, key = split_url(prefix)
    # Unknown here (another host's, or state lost); moto dates every upload 2010, so it is stale.
    s3.client().create_multipart_upload(Bucket=bucket, Key=f"{key}/orphan")
    # Ours, interrupted, its file still here: a later run can continue it.
    local, md5 = write_file(tmp_path / "local", 2 * PART + 1)

    def interrupted(_url, part, _parts):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        S3Store(store.scratch, part_size=PART, on_part=interrupted).upload_file(local, f"{prefix}/x", md5)
    elsewhere = f"s3://{BUCKET}/elsewhere-{key.rsplit('/', 1)[-1]}"
    s3.client().create_multipart_upload(Bucket=bucket, Key=split_url(elsewhere)[1] + "/y")

    assert store.remove_partial(prefix) == 1
    assert [u["Key"] for u in unfinished_uploads(prefix + "/")] == [f"{key}/x"]
    local.unlink()  # nobody can continue it now
    assert store.remove_partial(prefix) == 1
    assert unfinished_uploads(prefix + "/") == []
    assert len(unfinished_uploads(elsewhere + "/")) == 1  # outside the folder: not touched
    assert store.remove_partial(elsewhere) == 1


def test_output_store_methods_publish_only_on_success(store, prefix):
    object_servers.check_publishes_only_on_success(store, prefix)


def test_missing_extra_names_it():
    """Without boto3 the package imports, and asking for an s3:// store says what to install."""
    code = (
        "import sys; sys.modules['boto3'] = None\n"
        "from ilsvrc_assets.storage import store_for\n"
        "try:\n    store_for('s3://bucket/x')\nexcept ImportError as e:\n    print(e)\n"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install 'ilsvrc-assets[s3]'" in shown.stdout, shown.stderr


def test_missing_bucket_names_the_fix(store, tmp_path):
    local, md5 = write_file(tmp_path / "local", 10)
    with pytest.raises(ObjectStoreError, match="bucket no-such-bucket does not exist .*ILSVRC_OUTPUT_URL"):
        store.upload_file(local, "s3://no-such-bucket/x", md5)
    with pytest.raises(ObjectStoreError, match="create the bucket"):
        list(store.listing("s3://no-such-bucket/"))


def test_a_forked_child_makes_its_own_client(store, prefix):
    parent = s3.client()
    pid = os.fork()
    if pid == 0:  # the child: a client of its own, which works
        code = 0
        try:
            assert s3.client() is not parent
            store.put_bytes(f"{prefix}/from-child", b"child")
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert s3.client() is parent and store.read_bytes(f"{prefix}/from-child") == b"child"
