import hashlib
import os
import threading
from pathlib import Path

import pytest

from ilsvrc_assets import fileio, release, settings, sources
from ilsvrc_assets.archives import ChecksumCache
from ilsvrc_assets_tests.helpers import DATA, ETAG, LAST_MODIFIED, PATH, FileServer


def _fake_release(folder, with_md5sums=True):
    folder.mkdir()
    sums = {}
    for archive in release.ARCHIVES:
        (folder / archive.name).write_bytes(archive.name.encode())
        sums[archive.name] = fileio.md5_file(folder / archive.name)
    if with_md5sums:
        (folder / release.MD5SUMS).write_text(fileio.format_md5sums(sums))
    return sums


def test_local_source_verifies_against_md5sums_beside_the_archives(tmp_path):
    sums = _fake_release(tmp_path / "release")
    source = sources.LocalSource(tmp_path / "release")
    fetched = source.fetch(release.DEVKIT, ChecksumCache(tmp_path / "c.json"), print)
    assert fetched.path == tmp_path / "release" / release.DEVKIT.name  # used in place
    assert fetched.md5 == fetched.expected_md5 == sums[release.DEVKIT.name]
    assert fetched.expected_from.endswith("MD5SUMS") and not fetched.official


def test_local_source_without_md5sums_expects_the_official_md5(tmp_path):
    _fake_release(tmp_path / "release", with_md5sums=False)
    fetched = sources.LocalSource(tmp_path / "release").fetch(release.IMG_VAL, None, print)
    assert fetched.expected_md5 == release.IMG_VAL.md5 == "29b22e2961454d5413ddabcf34fc5622"
    assert fetched.expected_from == "the official release"


def test_missing_archive_and_folder_say_what_to_do(tmp_path):
    with pytest.raises(sources.SourceError, match="ILSVRC_LOCAL_DIR"):
        sources.LocalSource(tmp_path / "nowhere").locate(release.IMG_TRAIN, print)
    (tmp_path / "empty").mkdir()
    with pytest.raises(sources.SourceError, match="ILSVRC2012_img_train.tar"):
        sources.LocalSource(tmp_path / "empty").locate(release.IMG_TRAIN, print)


def test_sample_source_is_a_local_source_over_the_cached_sample(sample_release):
    source = sources.SampleSource(sample_release)
    fetched = source.fetch(release.BBOX_VAL, None, print)
    assert fetched.md5 == fetched.expected_md5
    assert "sample" in source.describe()


# --- Observation: a cheap version per archive, for the refresh -------------------------------


def test_local_observation_changes_with_size_or_modification_time_only(tmp_path):
    _fake_release(tmp_path / "release")
    source = sources.LocalSource(tmp_path / "release")
    path = tmp_path / "release" / release.BBOX_TRAIN.name
    first = source.observe(release.BBOX_TRAIN, print)
    st = path.stat()
    assert first == f"size={st.st_size} mtime_ns={st.st_mtime_ns}"
    assert source.observe(release.BBOX_TRAIN, print) == first  # nothing read, nothing changed
    assert source.observe(release.BBOX_VAL, print) != first
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    touched = source.observe(release.BBOX_TRAIN, print)
    assert touched != first
    path.write_bytes(b"x" * (st.st_size + 1))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # same time, other size
    assert source.observe(release.BBOX_TRAIN, print) not in (first, touched)
    # The version is recorded with the fetched archive, for the archive asset's metadata.
    fetched = source.fetch(release.BBOX_TRAIN, None, print)
    assert fetched.source_version == source.observe(release.BBOX_TRAIN, print)


def test_local_observation_of_a_missing_archive_names_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(sources.SourceError, match=release.DEVKIT.name):
        sources.LocalSource(tmp_path / "empty").observe(release.DEVKIT, print)


def test_sample_observation_is_the_generator_version(tmp_path):
    from ilsvrc_assets import sample

    source = sources.SampleSource(tmp_path / "not-generated")
    assert source.observe(release.IMG_TRAIN, print) == f"built-in sample v{sample.SAMPLE_VERSION}"
    assert not (tmp_path / "not-generated").exists()  # observing generates nothing


@pytest.fixture
def http_server(monkeypatch):
    """The loopback file server of the download tests, serving the devkit path and an MD5SUMS."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = FileServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def _serve(srv, data: bytes) -> None:
    srv.files[PATH] = data
    digest = hashlib.md5(data).hexdigest()
    srv.files[PATH.rsplit("/", 1)[0] + "/MD5SUMS"] = f"{digest}  {release.DEVKIT.name}\n".encode()


def test_http_observation_is_etag_last_modified_and_length_from_a_head_request(http_server):
    source = sources.HttpSource(http_server.base_url, Path("/nonexistent"))  # observing downloads nothing
    version = source.observe(release.DEVKIT, print)
    assert version == f"etag={ETAG} last_modified={LAST_MODIFIED} size={len(DATA)}"
    assert [s.method for s in http_server.seen] == ["HEAD"]  # not one byte of the archive fetched
    # A server refusing HEAD is asked for one byte instead; the version is the same.
    http_server.faults.refuse_head = True
    assert source.observe(release.DEVKIT, print) == version
    assert http_server.gets()[-1].headers.get("Range") == "bytes=0-0"


def test_http_fetch_downloads_again_only_when_the_source_changed(http_server, tmp_path):
    _serve(http_server, b"first devkit " * 1000)
    source = sources.HttpSource(http_server.base_url, tmp_path / "archives")
    first = source.fetch(release.DEVKIT, None, print)
    assert first.path.read_bytes() == b"first devkit " * 1000
    assert first.source_version == source.observe(release.DEVKIT, print)

    def archive_gets() -> list:
        return [s for s in http_server.gets() if s.path.endswith(release.DEVKIT.name)]

    assert len(archive_gets()) == 1

    again = sources.HttpSource(http_server.base_url, tmp_path / "archives").fetch(release.DEVKIT, None, print)
    assert again.source_version == first.source_version and len(archive_gets()) == 1  # kept

    _serve(http_server, b"second devkit, a different length " * 1000)
    said = []
    changed = sources.HttpSource(http_server.base_url, tmp_path / "archives").fetch(
        release.DEVKIT, None, said.append
    )
    assert changed.path.read_bytes() == b"second devkit, a different length " * 1000
    assert changed.md5 == changed.expected_md5 and changed.source_version != first.source_version
    assert len(archive_gets()) == 2
    assert any("changed at the source since it was downloaded" in line for line in said)


def test_the_http_source_gets_the_credentials_from_the_environment_given(tmp_path):
    s = settings.load(
        {"ILSVRC_SOURCE": "http", "ILSVRC_HTTP_URL": "https://example.org/", "ILSVRC_DATA_DIR": str(tmp_path)}
    )
    assert not sources.from_settings(s, {}).credentials.given
    source = sources.from_settings(s, {settings.ENV_HTTP_USERNAME: "alice", settings.ENV_HTTP_PASSWORD: "pw"})
    assert (source.credentials.username, source.credentials.password) == ("alice", "pw")
    assert sources.from_settings(s, {settings.ENV_HTTP_TOKEN: "tok"}).credentials.token == "tok"
