"""The http source end to end: the sample served on loopback, a transfer cut off midway, credentials."""

from __future__ import annotations

import base64
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from dagster import DagsterInstance

from ilsvrc_assets import fileio, release
from ilsvrc_assets.cli import failure_message
from ilsvrc_assets.definitions import JOB_NAMES
from ilsvrc_assets_tests.helpers import evaluations, make_settings, materialized, run_job

USER, PASSWORD = "alice", "s3cret-Pa55-do-not-log"
PREFIX = "/data/ILSVRC/2012/"


class ReleaseServer(ThreadingHTTPServer):
    """Serves a folder under PREFIX with Range support and basic auth; can cut one transfer short."""

    def __init__(self, folder: Path):
        super().__init__(("127.0.0.1", 0), ReleaseHandler)
        self.folder = folder
        self.cut_once: dict[str, int] = {}  # file name -> bytes to send before dropping the connection
        self.requests: list[tuple[str, str | None]] = []  # (file name, Range header)


class ReleaseHandler(BaseHTTPRequestHandler):
    server: ReleaseServer

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        # What the refresh observes and what fetch compares with the copy it has: size and date.
        name = self.path.removeprefix(PREFIX)
        path = self.server.folder / name
        found = self.path.startswith(PREFIX) and "/" not in name and path.is_file()
        self.send_response(200 if found else 404)
        if found:
            self.send_header("Content-Length", str(path.stat().st_size))
            self.send_header("Last-Modified", self.date_time_string(int(path.stat().st_mtime)))
        self.end_headers()

    def do_GET(self) -> None:
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="ImageNet"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        name = self.path.removeprefix(PREFIX)
        path = self.server.folder / name
        self.server.requests.append((name, self.headers.get("Range")))
        if not self.path.startswith(PREFIX) or "/" in name or not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = path.stat().st_size
        start = 0
        if (header := self.headers.get("Range")) and header.startswith("bytes="):
            start = int(header[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        limit = self.server.cut_once.pop(name, None)
        with open(path, "rb") as f:
            f.seek(start)
            sent = 0
            while chunk := f.read(1 << 16):
                if limit is not None and sent + len(chunk) > limit:
                    self.wfile.write(chunk[: limit - sent])
                    self.wfile.flush()
                    self.close_connection = True
                    return  # the client sees a body shorter than Content-Length
                self.wfile.write(chunk)
                sent += len(chunk)


@pytest.fixture
def server(sample_release, monkeypatch):
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    httpd = ReleaseServer(sample_release)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def _settings(tmp_path, server):
    url = f"http://127.0.0.1:{server.server_address[1]}{PREFIX}"
    return make_settings(tmp_path / "data", None, source="http", http_url=url)


ASSETS = [
    "train_archive",
    "validation_archive",
    "devkit_archive",
    "train_boxes_archive",
    "validation_boxes_archive",
    "synsets",
    "validation_labels",
    "validation_images",
]


def test_download_resumes_after_a_cut_and_feeds_the_graph(server, sample_release, tmp_path, monkeypatch):
    monkeypatch.setenv("ILSVRC_HTTP_USERNAME", USER)
    monkeypatch.setenv("ILSVRC_HTTP_PASSWORD", PASSWORD)
    size = (sample_release / release.IMG_VAL.name).stat().st_size
    server.cut_once[release.IMG_VAL.name] = size // 2
    settings = _settings(tmp_path, server)
    home = tmp_path / "home"
    home.mkdir()
    with DagsterInstance.local_temp(str(home)) as instance:
        result = run_job(settings, instance, JOB_NAMES["inputs"], ASSETS)
        assert result.success
        found = evaluations(result)
        for asset in ASSETS[:5]:
            check = found[f"{asset}:checksum"]
            assert check.passed and "MD5SUMS" in check.description
        assert materialized(result) == set(ASSETS)
        logs = "\n".join(entry.user_message for entry in instance.all_logs(result.run_id))
    # The cut transfer was resumed with a Range request, not restarted.
    val_requests = [r for name, r in server.requests if name == release.IMG_VAL.name]
    assert len(val_requests) == 2 and val_requests[1] == f"bytes={size // 2}-"
    for archive in release.ARCHIVES:
        downloaded = settings.download_dir / archive.name
        assert fileio.md5_file(downloaded) == fileio.md5_file(sample_release / archive.name)
    assert not list(settings.download_dir.glob("*.partial"))
    assert f"{release.IMG_VAL.name}: downloading from" in logs
    # The password never reaches the run logs, the metadata or the instance's storage.
    assert PASSWORD not in logs
    for path in home.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_wrong_credentials_say_which_variables_to_set(server, tmp_path, monkeypatch):
    monkeypatch.setenv("ILSVRC_HTTP_USERNAME", USER)
    monkeypatch.setenv("ILSVRC_HTTP_PASSWORD", "wrong-password-xyz")
    settings = _settings(tmp_path, server)
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        result = run_job(settings, instance, JOB_NAMES["inputs"], ["devkit_archive"])
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure_message(failure.step_failure_data)
    assert "ILSVRC_HTTP_USERNAME" in message and "wrong-password-xyz" not in message
    assert not (settings.download_dir / release.DEVKIT.name).exists()
