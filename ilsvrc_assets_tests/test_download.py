"""Tests for ilsvrc_assets.download against a real HTTP server on 127.0.0.1 with injectable faults."""

from __future__ import annotations

import base64
import fcntl
import logging
import threading
from pathlib import Path

import pytest

from ilsvrc_assets import download as dl
from ilsvrc_assets.download import (
    Credentials,
    DownloadError,
    archive_url,
    download,
    remote_info,
)
from ilsvrc_assets.settings import ENV_HTTP_PASSWORD, ENV_HTTP_TOKEN, ENV_HTTP_USERNAME
from ilsvrc_assets_tests.helpers import DATA, DATA_MD5, ETAG, LAST_MODIFIED, NAME, PATH, FileServer

# Tiny timeouts and back-offs so that every retry path runs in milliseconds.
FAST = {"timeout": 2.0, "retries": 3, "backoff": 0.001, "chunk_size": 64 * 1024}
PASSWORD = "s3cret-Pa55word"
TOKEN = "tok-9f8e7d6c5b4a"


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours proxy variables; a proxy must never see (or forward) these local requests."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def server():
    srv = FileServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def error_text(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    """The message plus everything chained to it, where a secret could also hide."""
    exc: BaseException | None = excinfo.value
    parts = []
    while exc is not None:
        parts.append(f"{exc!r} {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


# --- archive_url and Credentials ---------------------------------------------------------------


def test_archive_url_joins_with_or_without_trailing_slash() -> None:
    expected = "https://image-net.org/data/ILSVRC/2012/ILSVRC2012_img_val.tar"
    assert archive_url("https://image-net.org/data/ILSVRC/2012/", "ILSVRC2012_img_val.tar") == expected
    assert archive_url("https://image-net.org/data/ILSVRC/2012", "ILSVRC2012_img_val.tar") == expected
    assert (
        archive_url("https://mirror.example/x?sig=abc", "a.tar") == "https://mirror.example/x/a.tar?sig=abc"
    )
    with pytest.raises(ValueError, match="ILSVRC_HTTP_URL"):
        archive_url("  ", "a.tar")


def test_credentials_from_env_headers_and_repr() -> None:
    env = {ENV_HTTP_USERNAME: "alice", ENV_HTTP_PASSWORD: PASSWORD, ENV_HTTP_TOKEN: ""}
    creds = Credentials.from_env(env)
    assert creds == Credentials("alice", PASSWORD, None)  # an empty variable counts as unset
    expected = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert creds.headers() == {"Authorization": f"Basic {expected}"}
    assert Credentials(token=TOKEN).headers() == {"Authorization": f"Bearer {TOKEN}"}
    assert Credentials().headers() == {}
    assert Credentials.from_env({}) == Credentials()
    for shown in (repr(creds), str(creds), f"{creds}", repr(Credentials(token=TOKEN))):
        assert PASSWORD not in shown and TOKEN not in shown
    assert "alice" in repr(creds)


def test_credentials_reject_a_password_without_username_without_showing_it() -> None:
    with pytest.raises(ValueError, match=ENV_HTTP_USERNAME) as excinfo:
        Credentials.from_env({ENV_HTTP_PASSWORD: PASSWORD})
    assert PASSWORD not in str(excinfo.value)
    with pytest.raises(ValueError, match="line break"):
        Credentials(token="abc\r\nX-Injected: 1")


# --- Downloads -------------------------------------------------------------------------------


def test_download_streams_to_dest_and_returns_md5(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "archives" / NAME
    calls: list[tuple[int, int | None]] = []

    def progress(done: int, total: int | None) -> None:
        calls.append((done, total))

    assert download(server.url, dest, expected_md5=DATA_MD5.upper(), progress=progress, **FAST) == DATA_MD5
    assert dest.read_bytes() == DATA
    assert not dl.partial_path(dest).exists()
    assert [s.headers.get("Range") for s in server.gets()] == [None]
    # Throttled: ~50 chunks arrive in milliseconds, yet only a couple of reports, ending complete.
    assert calls[-1] == (len(DATA), len(DATA))
    assert len(calls) <= 3
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_interrupted_download_resumes_with_a_range_request(server: FileServer, tmp_path: Path) -> None:
    cut = 1_000_003
    server.faults.cut_first_get_after = cut
    dest = tmp_path / NAME
    assert download(server.url, dest, expected_md5=DATA_MD5, **FAST) == DATA_MD5
    gets = server.gets()
    assert len(gets) == 2
    assert "Range" not in gets[0].headers
    assert gets[1].headers["Range"] == f"bytes={cut}-"
    assert dest.read_bytes() == DATA
    assert not dl.partial_path(dest).exists()


def test_server_ignoring_range_restarts_from_zero(server: FileServer, tmp_path: Path) -> None:
    server.faults.cut_first_get_after = 500_000
    server.faults.ignore_range = True
    dest = tmp_path / NAME
    assert download(server.url, dest, **FAST) == DATA_MD5
    gets = server.gets()
    assert gets[1].headers["Range"] == "bytes=500000-"  # asked to resume, got the whole file
    assert dest.read_bytes() == DATA


def test_leftover_partial_from_an_earlier_call_is_resumed(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / NAME
    kept = 2_000_000
    dl.partial_path(dest).write_bytes(DATA[:kept])
    assert download(server.url, dest, expected_md5=DATA_MD5, **FAST) == DATA_MD5
    assert [s.headers.get("Range") for s in server.gets()] == [f"bytes={kept}-"]
    assert dest.read_bytes() == DATA


def test_complete_partial_answered_with_416_counts_as_done(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / NAME
    dl.partial_path(dest).write_bytes(DATA)
    assert download(server.url, dest, expected_md5=DATA_MD5, **FAST) == DATA_MD5
    assert [s.headers.get("Range") for s in server.gets()] == [f"bytes={len(DATA)}-"]
    assert dest.read_bytes() == DATA
    assert not dl.partial_path(dest).exists()


def test_partial_longer_than_the_file_is_discarded(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / NAME
    dl.partial_path(dest).write_bytes(DATA + b"left over from another file")
    assert download(server.url, dest, **FAST) == DATA_MD5
    assert [s.headers.get("Range") for s in server.gets()] == [f"bytes={len(DATA) + 27}-", None]
    assert dest.read_bytes() == DATA


def test_existing_dest_is_not_downloaded_again(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / NAME
    dest.write_bytes(DATA)
    assert download(server.url, dest, **FAST) == DATA_MD5
    assert download(server.url, dest, expected_md5=DATA_MD5, **FAST) == DATA_MD5
    assert server.seen == []


def test_existing_dest_with_wrong_md5_is_quarantined_and_downloaded_again(
    server: FileServer, tmp_path: Path
) -> None:
    dest = tmp_path / NAME
    dest.write_bytes(b"not the devkit")
    assert download(server.url, dest, expected_md5=DATA_MD5, **FAST) == DATA_MD5
    assert dest.read_bytes() == DATA
    assert dl.bad_md5_path(dest).read_bytes() == b"not the devkit"
    assert len(server.gets()) == 1


def test_wrong_md5_quarantines_the_download(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / NAME
    wrong = "0" * 32
    with pytest.raises(DownloadError) as excinfo:
        download(server.url, dest, expected_md5=wrong, **FAST)
    message = str(excinfo.value)
    assert wrong in message and DATA_MD5 in message and NAME in message
    assert "delete" in message.lower() and "run again" in message
    assert not dest.exists()
    assert not dl.partial_path(dest).exists()
    assert dl.bad_md5_path(dest).read_bytes() == DATA


def test_corrupt_leftover_partial_is_caught_by_md5_and_a_rerun_recovers(
    server: FileServer, tmp_path: Path
) -> None:
    dest = tmp_path / NAME
    dl.partial_path(dest).write_bytes(b"\0" * 100_000)  # same length as real bytes, wrong content
    with pytest.raises(DownloadError, match=DATA_MD5):
        download(server.url, dest, expected_md5=DATA_MD5, **FAST)
    assert not dest.exists() and dl.bad_md5_path(dest).exists()
    dl.bad_md5_path(dest).unlink()  # what the message tells the user to do
    assert download(server.url, dest, expected_md5=DATA_MD5, **FAST) == DATA_MD5


def test_server_error_is_retried(server: FileServer, tmp_path: Path) -> None:
    server.faults.fail_first_gets = [500, 429]
    dest = tmp_path / NAME
    assert download(server.url, dest, expected_md5=DATA_MD5, **FAST) == DATA_MD5
    assert len(server.gets()) == 3


def test_retries_run_out(server: FileServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server.faults.fail_first_gets = [503] * 10
    dest = tmp_path / NAME
    with caplog.at_level(logging.WARNING, logger="ilsvrc_assets.download"):
        with pytest.raises(DownloadError, match="after 3 attempt") as excinfo:
            download(server.url, dest, **{**FAST, "retries": 2})
    assert len(server.gets()) == 3  # retries counts the attempts after the first
    assert "503" in str(excinfo.value) and "run again to resume" in str(excinfo.value)
    assert len([r for r in caplog.records if "trying again" in r.getMessage()]) == 2
    assert not dest.exists()


def test_timeout_is_retried(server: FileServer, tmp_path: Path) -> None:
    server.faults.stall_first_get = True
    dest = tmp_path / NAME
    assert download(server.url, dest, expected_md5=DATA_MD5, **{**FAST, "timeout": 0.3}) == DATA_MD5
    assert len(server.gets()) == 2


def test_404_names_the_url_and_the_setting_without_retrying(server: FileServer, tmp_path: Path) -> None:
    url = archive_url(server.base_url, "ILSVRC2012_img_nope.tar")
    with pytest.raises(DownloadError) as excinfo:
        download(url, tmp_path / "x.tar", **FAST)
    assert url in str(excinfo.value) and "ILSVRC_HTTP_URL" in str(excinfo.value)
    assert (
        excinfo.value.not_found and excinfo.value.status == 404
    )  # lets callers treat optional files as absent
    assert len(server.gets()) == 1


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
def test_auth_required_without_credentials(server: FileServer, tmp_path: Path, scheme: str) -> None:
    if scheme == "basic":
        server.faults.basic = ("alice", PASSWORD)
    else:
        server.faults.bearer = TOKEN
    with pytest.raises(DownloadError) as excinfo:
        download(server.url, tmp_path / NAME, **FAST)
    message = str(excinfo.value)
    assert "none were given" in message
    assert ENV_HTTP_USERNAME in message and ENV_HTTP_PASSWORD in message and ENV_HTTP_TOKEN in message
    assert len(server.gets()) == 1  # 401 is not retried
    assert excinfo.value.status == 401 and not excinfo.value.not_found


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
def test_auth_with_credentials_and_no_secret_leaks(
    server: FileServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, scheme: str
) -> None:
    if scheme == "basic":
        server.faults.basic = ("alice", PASSWORD)
        good, bad = Credentials("alice", PASSWORD), Credentials("alice", PASSWORD + "-wrong")
        secrets = [PASSWORD, base64.b64encode(f"alice:{PASSWORD}".encode()).decode()]
    else:
        server.faults.bearer = TOKEN
        good, bad = Credentials(token=TOKEN), Credentials(token=TOKEN + "-wrong")
        secrets = [TOKEN]
    server.faults.cut_first_get_after = 123_456  # exercise the retry log lines too
    progress_seen: list[str] = []
    dest = tmp_path / NAME
    with caplog.at_level(logging.DEBUG):
        assert (
            download(
                server.url,
                dest,
                credentials=good,
                progress=lambda d, t: progress_seen.append(f"{d} {t}"),
                **FAST,
            )
            == DATA_MD5
        )
        with pytest.raises(DownloadError) as excinfo:
            download(server.url, tmp_path / "other.tar", credentials=bad, **FAST)
    assert "refused the credentials" in str(excinfo.value)
    assert ENV_HTTP_TOKEN in str(excinfo.value)
    assert any("trying again" in r.getMessage() for r in caplog.records)
    visible = "\n".join([error_text(excinfo), caplog.text, *progress_seen])
    for secret in secrets:
        assert secret not in visible


def test_userinfo_in_the_url_is_used_and_never_shown(server: FileServer, tmp_path: Path) -> None:
    server.faults.basic = ("alice", PASSWORD)
    with_userinfo = server.url.replace("http://", f"http://alice:{PASSWORD}@")
    assert download(with_userinfo, tmp_path / NAME, **FAST) == DATA_MD5
    assert all("@" not in s.path for s in server.seen)
    with pytest.raises(DownloadError) as excinfo:
        download(server.url.replace("http://", "http://alice:hunter2@"), tmp_path / "other.tar", **FAST)
    assert server.url in str(excinfo.value)
    assert "hunter2" not in error_text(excinfo)


def test_redirect_to_another_host_drops_the_credentials(server: FileServer, tmp_path: Path) -> None:
    port = server.server_address[1]
    server.redirects["/same"] = PATH
    server.redirects["/elsewhere"] = f"http://localhost:{port}{PATH}"
    creds = Credentials(token=TOKEN)
    base = f"http://127.0.0.1:{port}"
    assert download(f"{base}/same", tmp_path / "same.tar", credentials=creds, **FAST) == DATA_MD5
    assert download(f"{base}/elsewhere", tmp_path / "elsewhere.tar", credentials=creds, **FAST) == DATA_MD5
    by_host = [
        (s.path, s.headers.get("Host", "").split(":")[0], s.headers.get("Authorization"))
        for s in server.gets()
    ]
    assert by_host == [
        ("/same", "127.0.0.1", f"Bearer {TOKEN}"),
        (PATH, "127.0.0.1", f"Bearer {TOKEN}"),
        ("/elsewhere", "127.0.0.1", f"Bearer {TOKEN}"),
        (PATH, "localhost", None),
    ]


def test_login_page_instead_of_the_file(server: FileServer, tmp_path: Path) -> None:
    server.faults.content_type = "text/html; charset=utf-8"
    dest = tmp_path / NAME
    with pytest.raises(DownloadError, match="web page") as excinfo:
        download(server.url, dest, **FAST)
    assert ENV_HTTP_TOKEN in str(excinfo.value)
    assert not dest.exists()


def test_total_differing_from_the_stated_length_is_an_error(server: FileServer, tmp_path: Path) -> None:
    server.faults.claimed_total = len(DATA) - 10
    dest = tmp_path / NAME
    dl.partial_path(dest).write_bytes(DATA[:1000])
    with pytest.raises(DownloadError, match=f"server said the file has {len(DATA) - 10}"):
        download(server.url, dest, **FAST)
    assert not dest.exists()


def test_a_second_download_into_the_same_partial_is_refused(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / NAME
    with open(dl.partial_path(dest), "a+b") as busy:
        fcntl.flock(busy.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DownloadError, match="another process"):
            download(server.url, dest, **FAST)
    assert server.seen == []


def test_non_http_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="ILSVRC_HTTP_URL"):
        download("file:///etc/passwd", tmp_path / "x", **FAST)


# --- remote_info -----------------------------------------------------------------------------


def test_remote_info_uses_head(server: FileServer) -> None:
    info = remote_info(server.url, Credentials(), 2.0, backoff=0.001)
    assert info == {"content_length": len(DATA), "etag": ETAG, "last_modified": LAST_MODIFIED}
    assert [s.method for s in server.seen] == ["HEAD"]


def test_remote_info_falls_back_to_a_ranged_get(server: FileServer) -> None:
    server.faults.refuse_head = True
    info = remote_info(server.url, Credentials(), 2.0, backoff=0.001)
    assert info["content_length"] == len(DATA) and info["etag"] == ETAG
    assert [(s.method, s.headers.get("Range")) for s in server.seen] == [("HEAD", None), ("GET", "bytes=0-0")]


def test_remote_info_errors(server: FileServer) -> None:
    with pytest.raises(DownloadError, match="ILSVRC_HTTP_URL"):
        remote_info(archive_url(server.base_url, "missing.tar"), Credentials(), 2.0, backoff=0.001)
    server.faults.basic = ("alice", PASSWORD)
    with pytest.raises(DownloadError, match=ENV_HTTP_USERNAME) as excinfo:
        remote_info(server.url, Credentials("alice", "Wr0ng-Pa55"), 2.0, backoff=0.001)
    assert "Wr0ng-Pa55" not in error_text(excinfo)
    assert remote_info(server.url, Credentials("alice", PASSWORD), 2.0, backoff=0.001)[
        "content_length"
    ] == len(DATA)
