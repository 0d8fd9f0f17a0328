"""The test suite's plain helpers, in one module: settings for a private output folder, damaged
variants of the sample release, running the graph, the fault-injection tools and small images.

Fixtures live in ``conftest.py`` (which imports what it needs from here); test files import helpers
from here only, never from ``conftest.py`` or from one another.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import random
import socket
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ilsvrc_assets import fileio, images, release
from ilsvrc_assets.download import archive_url
from ilsvrc_assets.release import DEVKIT
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.shard_plan import RecordSource
from ilsvrc_assets.tf_example import encode_example

if TYPE_CHECKING:  # Dagster is imported where a graph runs: the plain-library tests stay light
    from dagster import DagsterInstance

# Small shard counts keep the graph tests fast; the shard names keep the real pattern.
TEST_SHARDS = {"train": 8, "validation": 4}

# --- Settings and variants of the sample release ---------------------------------------------


def make_settings(data_dir: Path, local_dir: Path | None, **overrides) -> Settings:
    """Settings for a local-folder source and a private output folder."""
    values = dict(
        source="local",
        data_dir=data_dir,
        local_dir=local_dir,
        http_url=None,
        sample_dir=data_dir / "sample",
        num_shards=dict(TEST_SHARDS),
        workers=2,
    )
    values.update(overrides)
    return Settings(**values)


def variant_release(
    sample_dir: Path, dest: Path, update_md5sums: bool = True, **replacements: Callable[[Path, Path], None]
) -> Path:
    """A copy of the sample in ``dest`` with some archives rewritten.

    Unchanged archives are symlinked (no copying of the large ones). ``replacements`` maps an
    archive key (``release.Archive.key``) to ``write(original, target)``. MD5SUMS lists the new
    digests when ``update_md5sums`` (so only the intended check fails), else the sample's.
    """
    dest.mkdir(parents=True, exist_ok=True)
    sums = fileio.read_md5sums(sample_dir / "MD5SUMS")
    for archive in release.ARCHIVES:
        target = dest / archive.name
        if archive.key in replacements:
            replacements[archive.key](sample_dir / archive.name, target)
            if update_md5sums:
                sums[archive.name] = fileio.md5_file(target)
        else:
            target.symlink_to(sample_dir / archive.name)
    (dest / "MD5SUMS").write_text(fileio.format_md5sums(sums))
    return dest


def rewrite_tar(
    original: Path,
    target: Path,
    edit: Callable[[tarfile.TarInfo, bytes], list[tuple[tarfile.TarInfo, bytes]]],
    compressed: bool = False,
) -> None:
    """Stream ``original`` into ``target``, passing each file member through ``edit``.

    ``edit(info, data)`` returns the members to write in its place ([] drops it).
    """
    mode_in, mode_out = ("r|gz", "w|gz") if compressed else ("r|", "w|")
    with tarfile.open(str(original), mode_in) as src, tarfile.open(str(target), mode_out) as out:
        for info in src:
            data = src.extractfile(info).read() if info.isreg() else b""
            for new_info, new_data in edit(info, data) if info.isreg() else [(info, b"")]:
                new_info.size = len(new_data)
                out.addfile(new_info, io.BytesIO(new_data) if new_info.isreg() else None)


def copy_file(src: Path, dst: Path) -> None:
    """A ``variant_release`` replacement that makes a real copy (a file the test may touch)."""
    shutil.copyfile(src, dst)


# --- Running the graph: the same stages as ``ilsvrc-assets build`` ----------------------------

ALL_CHECKS = {
    "train_archive:checksum",
    "validation_archive:checksum",
    "devkit_archive:checksum",
    "train_boxes_archive:checksum",
    "validation_boxes_archive:checksum",
    "synsets:one_thousand_synsets",
    "validation_labels:agrees_with_shipped_labels",
    "train_images:every_synset_has_training_images",
    "validation_images:fifty_per_synset",
    "validation_tree:matches_validation_label_file",
    "bounding_boxes:boxes_are_valid",
    "dataset_manifest:every_shard_present",
    "dataset_manifest:record_totals",
    "dataset_manifest:every_label_in_each_split",
    "dataset_manifest:records_parse",
    "dataset_manifest:images_decode",
    "dataset_manifest:every_index_matches_its_shard",
}


def build_all(settings: Settings, instance: DagsterInstance):
    """All stages; returns (results, failed)."""
    from ilsvrc_assets.cli import run_stages
    from ilsvrc_assets.definitions import build_definitions

    return run_stages(build_definitions(settings), instance, log_level="WARNING", echo=lambda _m: None)


def run_job(
    settings: Settings, instance: DagsterInstance, job: str, assets: list[str] | None = None, tags=None
):
    """One job of the code location (optionally a subset of its assets), not raising on failure."""
    from dagster import AssetKey

    from ilsvrc_assets.definitions import build_definitions

    definitions = build_definitions(settings)
    selection = [AssetKey(a) for a in assets] if assets else None
    return definitions.resolve_job_def(job).execute_in_process(
        instance=instance, raise_on_error=False, asset_selection=selection, tags=tags or {}
    )


def evaluations(*results) -> dict[str, object]:
    """Check name -> evaluation, over several run results."""
    found = {}
    for result in results:
        for e in result.get_asset_check_evaluations():
            found[f"{e.asset_key.to_user_string()}:{e.check_name}"] = e
    return found


def materialized(result) -> set[str]:
    """The names of the assets a run materialised."""
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


# --- Fault injection: the main command in a child process the test can kill ------------------


def build_env(settings: Settings, dagster_home: Path, **extra: str) -> dict[str, str]:
    """The environment that makes ``ilsvrc-assets build`` use ``settings`` (sample source)."""
    env = dict(os.environ)
    env.update(
        ILSVRC_SOURCE="sample",
        ILSVRC_SAMPLE_DIR=str(settings.sample_dir),
        ILSVRC_DATA_DIR=str(settings.data_dir),
        ILSVRC_TRAIN_SHARDS=str(TEST_SHARDS["train"]),
        ILSVRC_VALIDATION_SHARDS=str(TEST_SHARDS["validation"]),
        ILSVRC_WORKERS=str(settings.workers),
        DAGSTER_HOME=str(dagster_home),
        **extra,
    )
    return env


def start_build(env: dict[str, str], log: Path) -> subprocess.Popen:
    """``ilsvrc-assets build`` in its own process group (so a kill reaches its worker processes)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ilsvrc_assets.cli", "build", "--log-level", "WARNING"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float, log: Path) -> None:
    """SIGKILL the process group of ``process`` as soon as ``ready()``; fail if it never is."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                raise AssertionError(
                    f"the build ended (exit {process.returncode}) before the moment to kill it:\n"
                    + log.read_text()[-3000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for the moment to kill the build:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.02)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)
        _wait_group_gone(process.pid)


def _wait_group_gone(pgid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes of group {pgid} still alive after SIGKILL")


# --- Comparing output folders ----------------------------------------------------------------


def final_files(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by relative path, temp files excluded."""
    return {
        str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file() and not fileio.is_temp_path(p)
    }


def temp_files(folder: Path) -> list[Path]:
    """The temporary files (``fileio.is_temp_path``) left under ``folder``."""
    return [p for p in folder.rglob("*") if p.is_file() and fileio.is_temp_path(p)]


def differing(folder: Path, reference: Path, names: list[str] | None = None) -> list[str]:
    """Relative paths under ``folder`` whose bytes differ from ``reference`` (or are missing there)."""
    names = sorted(final_files(folder)) if names is None else names
    bad = []
    for name in names:
        ours, theirs = folder / name, reference / name
        if not theirs.is_file() or not ours.is_file() or ours.read_bytes() != theirs.read_bytes():
            bad.append(name)
    return bad


# --- Small images of each kind the release holds ---------------------------------------------


def encode(image: Image.Image, format: str = "JPEG", **options) -> bytes:
    """``image`` saved in ``format`` (Pillow's options), as bytes."""
    out = io.BytesIO()
    image.save(out, format=format, **options)
    return out.getvalue()


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Random pixels (reproducible from ``seed``): nothing compresses them away."""
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    array = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(array[:, :, 0] if channels == 1 else array, mode)


def rgb_jpeg(width: int = 40, height: int = 30, **options) -> bytes:
    return encode(noise(width, height), "JPEG", **options)


def gray_jpeg(width: int = 40, height: int = 30) -> bytes:
    return encode(noise(width, height, "L"), "JPEG")


def cmyk_jpeg(width: int = 40, height: int = 30) -> bytes:
    return encode(Image.new("CMYK", (width, height), (0, 255, 255, 0)), "JPEG")  # red, in CMYK


def png(width: int = 40, height: int = 30, mode: str = "RGB") -> bytes:
    return encode(noise(width, height, mode), "PNG")


# --- Records: two sources, and writing, encoding and editing records ---------------------------

TENCH = RecordSource(
    filename="n01440764_10026.JPEG",
    synset="n01440764",
    label=1,
    text="tench, Tinca tinca",
    offset=0,
    size=0,
    boxes=((0.1, 0.2, 0.5, 0.75), (0.0, 0.0, 1.0, 1.0)),
)
TOILET_TISSUE = RecordSource(
    filename="ILSVRC2012_val_00000293.JPEG",
    synset="n15075141",
    label=1000,
    text="toilet tissue, toilet paper, bathroom tissue",
    offset=0,
    size=0,
)


def encode_record(source: RecordSource, data: bytes) -> bytes:
    return encode_example(source, data, images.probe(data, source.filename))


def write_records(path: Path, serialized: list[bytes]) -> Path:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in serialized:
            writer.write(record)
    return path


def tfrecord2idx(shard: Path, index: Path) -> bytes:
    """What NVIDIA DALI's own ``tfrecord2idx`` (the script its wheel installs beside ``python``) writes as
    ``index`` for ``shard``; run in this process (it is a plain script), so TensorFlow loads only once."""
    import runpy

    tool = Path(sys.executable).parent / "tfrecord2idx"
    argv = sys.argv
    sys.argv = [str(tool), str(shard), str(index)]
    try:
        runpy.run_path(str(tool), run_name="__main__")
    finally:
        sys.argv = argv
    return index.read_bytes()


def edited(record: bytes, edit: Callable[[object], None]) -> bytes:
    """``record`` with its tf.train.Example changed by ``edit(features.feature)``."""
    import tensorflow as tf

    example = tf.train.Example.FromString(record)
    edit(example.features.feature)
    return example.SerializeToString(deterministic=True)


# --- A loopback HTTP file server with injectable faults (the download and HTTP source tests) ------

NAME = DEVKIT.name
PATH = f"/data/ILSVRC/2012/{NAME}"
# A few MB of deterministic random bytes, an odd size so that no chunk boundary lines up.
DATA = random.Random(2012).randbytes(3 * 1024 * 1024 + 4321)
DATA_MD5 = hashlib.md5(DATA).hexdigest()
ETAG = '"ilsvrc-test-etag"'
LAST_MODIFIED = "Tue, 01 May 2012 00:00:00 GMT"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Faults:
    cut_first_get_after: int | None = None  # first GET: promise the full length, send only N bytes, hang up
    ignore_range: bool = False  # answer every GET with the whole file (200)
    fail_first_gets: list[int] = field(default_factory=list)  # statuses for the first GETs, in order
    stall_first_get: bool = False  # first GET: say nothing until the client gives up
    basic: tuple[str, str] | None = None  # require these basic credentials
    bearer: str | None = None  # require this bearer token
    content_type: str = "application/x-tar"
    refuse_head: bool = False  # 405 for HEAD
    claimed_total: int | None = None  # lie about the total in Content-Range


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {PATH: DATA}
        self.redirects: dict[str, str] = {}
        self.faults = Faults()
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # ends a stalled answer at shutdown

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/data/ILSVRC/2012"

    @property
    def url(self) -> str:
        return archive_url(self.base_url, NAME)

    def gets(self) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.method == "GET"]

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        pass  # clients hanging up on purpose are expected here; keep test output clean


class Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.serve(head=True)

    def do_GET(self) -> None:
        self.serve(head=False)

    def serve(self, head: bool) -> None:
        srv, faults = self.server, self.server.faults
        with srv.lock:
            srv.seen.append(Seen(self.command, self.path, dict(self.headers)))
            get_number = sum(1 for s in srv.seen if s.method == "GET")
        if head and faults.refuse_head:
            return self.send_error(405)
        if not head and faults.stall_first_get and get_number == 1:
            srv.release.wait(5)
            return
        if not head and get_number <= len(faults.fail_first_gets):
            return self.send_error(faults.fail_first_gets[get_number - 1])
        if not self.authorized():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="ilsvrc"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path in srv.redirects:
            self.send_response(302)
            self.send_header("Location", srv.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = srv.files.get(self.path)
        if data is None:
            return self.send_error(404)

        start, end = 0, len(data) - 1
        wanted = self.headers.get("Range")
        if wanted and not faults.ignore_range:
            first, _, last = wanted.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last) if last else end, end)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            total = faults.claimed_total if faults.claimed_total is not None else len(data)
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        else:
            self.send_response(200)
        body = data[start : end + 1]
        self.send_header("Content-Type", faults.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", ETAG)
        self.send_header("Last-Modified", LAST_MODIFIED)
        self.end_headers()
        if head:
            return
        if faults.cut_first_get_after is not None and get_number == 1:
            self.wfile.write(body[: faults.cut_first_get_after])
            self.wfile.flush()
            # Half-close after the bytes so that they all arrive, then the client sees a short body.
            self.connection.shutdown(socket.SHUT_WR)
            self.close_connection = True
            return
        self.wfile.write(body)

    def authorized(self) -> bool:
        faults = self.server.faults
        given = self.headers.get("Authorization")
        if faults.basic is not None:
            pair = base64.b64encode(f"{faults.basic[0]}:{faults.basic[1]}".encode()).decode()
            return given == f"Basic {pair}"
        if faults.bearer is not None:
            return given == f"Bearer {faults.bearer}"
        return True
