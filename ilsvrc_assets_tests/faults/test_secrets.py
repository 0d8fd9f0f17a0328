"""Secrets: HTTP credentials never appear in the terminal output, the run logs, run metadata, error
messages or the Dagster event log, even when the server refuses them (the test searches every byte
of the instance's storage). A URL with credentials in it is refused before it can be stored."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ilsvrc_assets import settings as settings_module
from ilsvrc_assets_tests.helpers import build_env, make_settings

PASSWORD = "pw-Zq81-never-shown"
TOKEN = "tok-Hv27-never-shown"


class _Refusing(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RefusingHandler)
        self.authorizations: list[str | None] = []


class _RefusingHandler(BaseHTTPRequestHandler):
    """Answers every request with 403 Forbidden, as image-net.org does for a wrong account."""

    server: _Refusing

    def log_message(self, *args) -> None:
        pass

    def _refuse(self) -> None:
        self.server.authorizations.append(self.headers.get("Authorization"))
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _refuse


@pytest.fixture
def refusing_server():
    server = _Refusing()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize(
    "credentials, secrets",
    [
        (
            {"ILSVRC_HTTP_USERNAME": "alice", "ILSVRC_HTTP_PASSWORD": PASSWORD},
            [PASSWORD, base64.b64encode(f"alice:{PASSWORD}".encode()).decode()],
        ),
        ({"ILSVRC_HTTP_TOKEN": TOKEN}, [TOKEN]),
    ],
    ids=["basic", "token"],
)
def test_refused_credentials_are_named_but_never_shown_or_stored(
    refusing_server, tmp_path, credentials, secrets
):
    settings = make_settings(tmp_path / "data", None)
    env = build_env(settings, tmp_path / "dagster_home")
    env.update(
        ILSVRC_SOURCE="http",
        ILSVRC_HTTP_URL=f"http://127.0.0.1:{refusing_server.server_address[1]}/data/ILSVRC/2012/",
        no_proxy="127.0.0.1",
        http_proxy="",
        HTTP_PROXY="",
        **credentials,
    )
    build = subprocess.run(
        [sys.executable, "-m", "ilsvrc_assets.cli", "build", "--log-level", "DEBUG"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = build.stdout + build.stderr
    assert build.returncode == 1, output[-3000:]
    # The credentials were sent (so the refusal is about them), and the user is told what to set.
    assert refusing_server.authorizations and all(refusing_server.authorizations)
    assert "403" in output and "ILSVRC_HTTP_USERNAME" in output and "ILSVRC_HTTP_TOKEN" in output
    stored = [p for p in (tmp_path / "dagster_home").rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in stored), "the run was not recorded"
    for secret in secrets:
        assert secret not in output
        for path in [*stored, *(p for p in settings.data_dir.rglob("*") if p.is_file())]:
            assert secret.encode() not in path.read_bytes(), f"{secret} found in {path}"


def test_a_url_with_credentials_in_it_is_refused_without_echoing_them():
    with pytest.raises(settings_module.SettingsError) as caught:
        settings_module.load(
            {
                "ILSVRC_SOURCE": "http",
                "ILSVRC_HTTP_URL": f"https://alice:{PASSWORD}@image-net.org/data/ILSVRC/2012/",
            }
        )
    message = str(caught.value)
    assert PASSWORD not in message and "alice" not in message
    assert (
        "ILSVRC_HTTP_USERNAME" in message
        and "ILSVRC_HTTP_URL=https://image-net.org/data/ILSVRC/2012/" in message
    )


def test_a_refused_hugging_face_token_is_never_shown_or_stored(tmp_path):
    """ILSVRC_SOURCE=huggingface with HF_TOKEN, against a loopback hub (HF_ENDPOINT) that refuses it:
    the build fails at the input assets, and the token is nowhere in its output or storage."""
    from ilsvrc_assets_tests.helpers import HubServer

    secret = "hf_Rq52-never-shown-anywhere"
    (tmp_path / "hub").mkdir()
    settings = make_settings(tmp_path / "data", None)
    env = build_env(settings, tmp_path / "dagster_home")
    with HubServer(tmp_path / "hub", "ILSVRC/imagenet-1k", "hf_the-right-one") as hub:
        env.update(
            ILSVRC_SOURCE="huggingface",
            HF_TOKEN=secret,
            HF_ENDPOINT=hub.endpoint,
            HF_HUB_DISABLE_TELEMETRY="1",
            no_proxy="127.0.0.1,localhost",
            http_proxy="",
            HTTP_PROXY="",
        )
        build = subprocess.run(
            [sys.executable, "-m", "ilsvrc_assets.cli", "build", "--log-level", "DEBUG"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    output = build.stdout + build.stderr
    assert build.returncode == 1, output[-3000:]
    # The token was sent (so the refusal is about it), and the user is told what to check.
    assert f"Bearer {secret}" in hub.authorizations and "HF_TOKEN" in output
    stored = [p for p in (tmp_path / "dagster_home").rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in stored), "the run was not recorded"
    assert secret not in output
    for path in [*stored, *(p for p in settings.data_dir.rglob("*") if p.is_file())]:
        assert secret.encode() not in path.read_bytes(), f"the token found in {path}"
