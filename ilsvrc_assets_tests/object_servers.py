"""Object storage servers on loopback for the tests of the s3:// and gs:// stores: moto's S3 server and
gcp-storage-emulator, each a real subprocess speaking HTTP, and :class:`DroppingProxy`, a TCP proxy
that cuts or corrupts one connection in transit.

The fixtures (``moto_server``, ``gcs_emulator``) start one server per test module and point the
standard variables at it (``AWS_ENDPOINT_URL`` and test credentials; ``STORAGE_EMULATOR_HOST``), as a
build would see them; the stores create their clients from those variables. A server that does not
start fails the test with its output: nothing is skipped.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_TIMEOUT = 60.0  # seconds; moto imports much of boto and Flask before it listens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A server subprocess on 127.0.0.1: its endpoint, the variables that point a client at it."""

    kind: str  # "s3" or "gs"
    process: subprocess.Popen
    port: int
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def make_bucket(self, name: str) -> None:
        """Create bucket ``name`` over plain HTTP (no client library, no variables needed)."""
        if self.kind == "s3":
            request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        else:
            request = urllib.request.Request(
                f"{self.endpoint}/storage/v1/b?project=test",
                data=json.dumps({"name": name}).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
        with urllib.request.urlopen(request, timeout=30) as response:
            if response.status not in (200, 201):
                raise RuntimeError(f"{self.kind} server: creating bucket {name} answered {response.status}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _start(kind: str, command: list[str], tmp: Path, port: int, env: dict[str, str]) -> Server:
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / f"{kind}-server-{port}.log"
    with open(log, "wb") as out:  # a file, not a pipe: a full pipe would stall the server
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    server = Server(kind, process, port, log, env)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"{' '.join(command)} exited with {process.returncode} before answering:\n{server.output()}"
            )
        try:
            with urllib.request.urlopen(server.endpoint + "/", timeout=2):
                return server
        except urllib.error.HTTPError:
            return server  # it answers, if not with 200
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    f"{' '.join(command)} did not answer within {START_TIMEOUT:.0f} s:\n{server.output()}"
                ) from None
            time.sleep(0.1)


def start_moto(tmp: Path) -> Server:
    """moto's S3 server (``python -m moto.server``) on a free loopback port."""
    port = free_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return _start("s3", command, Path(tmp), port, env)


def start_gcs_emulator(tmp: Path) -> Server:
    """gcp-storage-emulator (in memory) on a free loopback port; its script is beside this Python."""
    port = free_port()
    script = Path(sys.executable).parent / "gcp-storage-emulator"
    if not script.exists():
        raise RuntimeError(f"{script} is missing: pip install 'ilsvrc-assets[test]'")
    env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}", "GOOGLE_CLOUD_PROJECT": "test"}
    command = [str(script), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"]
    return _start("gs", command, Path(tmp), port, env)


S3_VARIABLES_UNSET = ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE")
"""Variables of a developer's own setup that would send the test clients elsewhere."""


@contextmanager
def environment(values: dict[str, str], unset: tuple[str, ...] = ()) -> Iterator[None]:
    """Set ``values`` and remove ``unset`` for the block; the previous environment comes back after it."""
    with pytest.MonkeyPatch.context() as patch:
        for name in unset:
            patch.delenv(name, raising=False)
        for name, value in values.items():
            patch.setenv(name, value)
        yield


def _serving(start, tmp: Path, unset: tuple[str, ...] = ()) -> Iterator[Server]:
    try:
        server = start(tmp)
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        with environment(server.env, unset):
            yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """moto's S3 server for the module, with ``AWS_ENDPOINT_URL`` and test credentials set."""
    yield from _serving(start_moto, tmp_path_factory.mktemp("moto"), S3_VARIABLES_UNSET)


@pytest.fixture(scope="module")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """gcp-storage-emulator for the module, with ``STORAGE_EMULATOR_HOST`` and a project set."""
    yield from _serving(start_gcs_emulator, tmp_path_factory.mktemp("gcs"))


class DroppingProxy:
    """A TCP proxy on 127.0.0.1 to ``target_port`` that, once, cuts the first connection whose bytes
    towards the server pass ``drop_after_bytes`` (after forwarding exactly that many), and, once,
    inverts the byte at offset ``corrupt_after_bytes`` of the first connection that gets that far.

    Offsets count every byte a connection carries towards the server, HTTP headers included: pick
    offsets well inside a request body. ``dropped`` and ``corrupted`` say whether it happened;
    ``connections`` counts the connections accepted; ``request_lines`` holds the first line of each
    request that began a read from a client (``PUT /path?query HTTP/1.1``), to see what was asked.
    """

    def __init__(
        self,
        target_port: int,
        drop_after_bytes: int | None = None,
        corrupt_after_bytes: int | None = None,
    ):
        self.target_port = target_port
        self.drop_after_bytes = drop_after_bytes
        self.corrupt_after_bytes = corrupt_after_bytes
        self.dropped = 0
        self.corrupted = 0
        self.connections = 0
        self.request_lines: list[str] = []
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="dropping-proxy", daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> DroppingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            live = list(self._sockets)
        for sock in live:
            _shut(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
                self._sockets.update((client, server))
            pair = (client, server)
            threading.Thread(target=self._pump, args=(client, server, True, pair), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False, pair), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool, pair: tuple) -> None:
        carried = 0
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                break
            if not data:
                break
            cut_at = None
            if upstream:
                with self._lock:
                    if data[:8].split(b" ", 1)[0] in (b"GET", b"HEAD", b"PUT", b"POST", b"DELETE"):
                        self.request_lines.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                    end = carried + len(data)
                    corrupt = self.corrupt_after_bytes
                    if corrupt is not None and not self.corrupted and carried <= corrupt < end:
                        data = bytearray(data)
                        data[corrupt - carried] ^= 0xFF
                        self.corrupted += 1
                    drop = self.drop_after_bytes
                    if drop is not None and not self.dropped and end > drop:
                        cut_at = drop - carried
                        self.dropped += 1
                carried += len(data)
            try:
                sink.sendall(data if cut_at is None else data[:cut_at])
            except OSError:
                break
            if cut_at is not None:
                for sock in pair:
                    _shut(sock)
                return
        try:
            sink.shutdown(socket.SHUT_WR)  # pass the end of one direction on; the other may go on
        except OSError:
            pass
        if not upstream:  # the server has finished answering: the connection is over
            for sock in pair:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recv(), which close() would not
    except OSError:
        pass
    sock.close()


def write_file(path: Path, size: int, seed: int = 0) -> tuple[Path, str]:
    """A file of ``size`` pseudo-random bytes at ``path``; returns it and its hex MD5."""
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path, hashlib.md5(data).hexdigest()


def damage(path: Path, offset: int) -> None:
    """Invert the byte at ``offset`` of ``path`` in place (a scratch disk's bit rot)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


class Boom(Exception):
    """Raised inside a writing block, to show that nothing is published."""


def check_publishes_only_on_success(store, prefix: str) -> None:
    """The :class:`OutputStore` methods of an object ``store`` publish whole objects when their block
    succeeds, nothing when it raises, and leave no staged file in the scratch folder either way."""
    from ilsvrc_assets.storage import open_output, store_for, write_text

    assert type(store_for(f"{prefix}/x")) is type(store)

    with store.open_write(f"{prefix}/binary.bin") as f:
        f.write(b"\x00\x01" * 1000)
    assert store.read_bytes(f"{prefix}/binary.bin") == b"\x00\x01" * 1000
    info = store.info(f"{prefix}/binary.bin")
    assert info.md5 in (hashlib.md5(b"\x00\x01" * 1000).hexdigest(), None) and info.writer

    with store.open_write(f"{prefix}/text.csv", "w") as f:
        f.write("wnid,name\nn01440764,tench ✓\n")
    assert store.read_bytes(f"{prefix}/text.csv").decode() == "wnid,name\nn01440764,tench ✓\n"

    with store.staged_file(f"{prefix}/staged.tfrecord") as path:
        path.write_bytes(b"staged")
    assert store.read_bytes(f"{prefix}/staged.tfrecord") == b"staged"

    store.write_into(f"{prefix}/tree/", "image.JPEG", b"jpeg")
    assert store.read_bytes(f"{prefix}/tree/image.JPEG") == b"jpeg"
    write_text(f"{prefix}/manifest.json", "{}")  # through the registry, as the pipeline writes
    with open_output(f"{prefix}/manifest.json") as f:  # overwrites: the previous version was ours
        f.write(b'{"v": 2}')
    assert store.read_bytes(f"{prefix}/manifest.json") == b'{"v": 2}'

    # A failing block publishes nothing and keeps the previous version.
    for name, opener in [
        ("failed-open-write.bin", lambda url: store.open_write(url)),
        ("failed-text.csv", lambda url: store.open_write(url, "w")),
        ("failed-staged.tfrecord", lambda url: store.staged_file(url)),
        ("manifest.json", lambda url: store.open_write(url)),
    ]:
        url = f"{prefix}/{name}"
        with pytest.raises(Boom), opener(url) as target:
            if isinstance(target, Path):
                target.write_bytes(b"half")
            else:
                target.write("half" if isinstance(target, io.TextIOBase) else b"half")
            raise Boom
    assert store.info(f"{prefix}/failed-open-write.bin") is None
    assert store.info(f"{prefix}/failed-text.csv") is None
    assert store.info(f"{prefix}/failed-staged.tfrecord") is None
    assert store.read_bytes(f"{prefix}/manifest.json") == b'{"v": 2}'

    names = sorted(info.url.removeprefix(prefix + "/") for info in store.listing(prefix + "/"))
    assert names == ["binary.bin", "manifest.json", "staged.tfrecord", "text.csv", "tree/image.JPEG"]
    assert not list(store.scratch.glob(".ilsvrc-stage-*")), "staged files left in the scratch folder"
