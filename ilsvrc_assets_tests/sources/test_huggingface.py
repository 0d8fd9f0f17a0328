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
from ilsvrc_assets.sample.huggingface import write_huggingface_layout
from ilsvrc_assets.sources import huggingface as hf
from ilsvrc_assets_tests.helpers import HubServer, rgb_jpeg

TOKEN = "hf_Tk93-never-shown-anywhere"


@pytest.fixture(scope="module")
def hf_copy(sample_release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in sample in the Hugging Face layout (``data/*.tar.gz``)."""
    dest = tmp_path_factory.mktemp("hf") / "imagenet-1k"
    write_huggingface_layout(sample_release, dest)
    return dest


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
        assert {a for (_, p, _), a in zip(hub.requests, hub.authorizations) if p.startswith("/cdn/")} == {None}
