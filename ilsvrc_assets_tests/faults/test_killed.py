"""Killed mid-step (SIGKILL, no chance to clean up): nothing partial under a final name, and running
again finishes the job with outputs equal to a clean run's, byte for byte."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ilsvrc_assets import download, release, versions
from ilsvrc_assets_tests.helpers import (
    build_env,
    build_to_the_end,
    differing,
    final_files,
    kill_when,
    make_settings,
    start_build,
    temp_files,
)

pytestmark = pytest.mark.long(seconds=250)  # conftest: the long files start first


def _files_in(tree: Path) -> int:
    """Files (images and temporary files) in the synset folders of the tree so far."""
    if not tree.is_dir():
        return 0
    return sum(len(os.listdir(folder)) for folder in tree.iterdir() if folder.is_dir())


def test_build_killed_in_the_validation_tree_and_in_a_shard_range_then_finished(
    sample_release, built_sample_graph, tmp_path
):
    reference = built_sample_graph[0]
    settings = make_settings(tmp_path / "data", None, source="sample", sample_dir=sample_release)
    env = build_env(settings, tmp_path / "dagster_home")
    # Where the build writes: the versions it publishes once checked (made here, continued by the build).
    tree, tfrecords = versions.working(settings, "validation"), versions.working(settings, "tfrecords")

    # 1. Killed while the validation tree is being written.
    log = tmp_path / "build-1.log"
    kill_when(
        start_build(env, log),
        lambda: _files_in(tree) >= 5000,
        timeout=240,
        log=log,
    )
    written = final_files(tree)
    assert 0 < len(written) < release.NUM_VALIDATION_IMAGES, "the kill did not land inside the tree step"
    # Whatever is under a final name is complete: the same bytes as the clean build's.
    assert differing(tree, reference.validation_dir, sorted(written)) == []
    assert not settings.validation_dir.exists()  # readers see nothing of it

    # 2. Run again, killed inside the validation shard range (some shards written, not all).
    log = tmp_path / "build-2.log"
    shards = settings.shard_names("validation")
    kill_when(
        # One worker writes the shards one after another: a wide window to land the kill in.
        start_build({**env, "ILSVRC_WORKERS": "1"}, log),
        lambda: any((tfrecords / name).exists() for name in shards),
        timeout=240,
        log=log,
    )
    present = [name for name in shards if (tfrecords / name).exists()]
    assert 0 < len(present) < len(shards), f"the kill did not land inside the shard range: {present}"
    assert differing(tfrecords, reference.tfrecords_dir, present) == []
    # A shard's index is published before the shard: each shard present has its whole index.
    index_dir, reference_index_dir = (
        tfrecords.parent / "tfrecords-index",
        reference.data_dir / "tfrecords-index",
    )
    assert differing(index_dir, reference_index_dir, [f"{name}.idx" for name in present]) == []
    assert not settings.tfrecords_dir.exists()  # nor of the shards

    # 3. Run again to the end: everything as a clean run left it, and no temporary file anywhere.
    build_to_the_end(env, tmp_path / "build-3.log")
    # What readers see from now on (the build published new versions, made from those written).
    tree, tfrecords, index_dir = (
        settings.data_dir / f for f in ("validation", "tfrecords", "tfrecords-index")
    )
    all_shards = settings.shard_names("train") + shards
    assert sorted(final_files(tfrecords)) == sorted([*all_shards, "manifest.json"])
    assert differing(tfrecords, reference.tfrecords_dir, all_shards) == []
    assert sorted(final_files(index_dir)) == sorted(f"{name}.idx" for name in all_shards)
    assert differing(index_dir, reference_index_dir) == []
    assert len(final_files(tree)) == release.NUM_VALIDATION_IMAGES
    assert differing(tree, reference.validation_dir) == []
    for output in ("bounding_boxes_csv", "validation_bounding_boxes_csv", "synsets_csv"):
        assert getattr(settings, output).read_bytes() == getattr(reference, output).read_bytes(), output
    assert temp_files(settings.data_dir) == []


# --- A download killed midway ------------------------------------------------------------------

DATA = random.Random(5).randbytes(4 * 1024 * 1024 + 17)


class SlowServer(ThreadingHTTPServer):
    """Serves DATA at /f.tar with Range support; slowly at first, so a download can be killed."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SlowHandler)
        self.delay = 0.02  # seconds per 64 KB
        self.ranges: list[str | None] = []


class SlowHandler(BaseHTTPRequestHandler):
    server: SlowServer

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.ranges.append(self.headers.get("Range"))
        start = 0
        if header := self.headers.get("Range"):
            start = int(header.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(DATA) - start))
        self.end_headers()
        try:
            for offset in range(start, len(DATA), 65536):
                self.wfile.write(DATA[offset : offset + 65536])
                time.sleep(self.server.delay)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client was killed


def test_download_killed_midway_resumes_from_its_partial_file(tmp_path, monkeypatch):
    for proxy in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    server = SlowServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/f.tar"
    dest = tmp_path / "archives" / "f.tar"
    partial = download.partial_path(dest)
    expected = hashlib.md5(DATA).hexdigest()
    try:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; from ilsvrc_assets import download; "
                "download.download(sys.argv[1], Path(sys.argv[2]), expected_md5=sys.argv[3])",
                url,
                str(dest),
                expected,
            ],
            env={**os.environ, "no_proxy": "127.0.0.1"},
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while not (partial.exists() and partial.stat().st_size > len(DATA) // 4):
            assert child.poll() is None and time.monotonic() < deadline, "the download never got going"
            time.sleep(0.01)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        kept = partial.stat().st_size
        assert not dest.exists(), "a killed download must never appear under its final name"
        assert 0 < kept < len(DATA)
        assert DATA.startswith(partial.read_bytes())  # what is kept is a true prefix

        server.delay = 0
        digest = download.download(url, dest, expected_md5=expected, timeout=10)
        assert digest == expected and dest.read_bytes() == DATA and not partial.exists()
        # The second call asked only for what was missing, from where the kill left it.
        assert server.ranges[-1] == f"bytes={kept}-"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
