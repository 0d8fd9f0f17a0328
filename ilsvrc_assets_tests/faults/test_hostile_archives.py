"""Hostile archives: nothing they say about themselves is trusted. Members with absolute paths,
``..``, links pointing outside, or device files are refused with the archive and member named (the
release holds only regular files), and nothing is ever written outside <data>. XML with external
entities never reaches the network or the disk.

Also covered elsewhere: entity expansion ("billion laughs"), external entities to files and huge
XML members (test_bounding_boxes: test_bad_xml_raises_naming_the_member,
test_oversized_xml_is_refused)."""

from __future__ import annotations

import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from dagster import DagsterInstance

from ilsvrc_assets import archives, bounding_boxes, release
from ilsvrc_assets.archives import ArchiveError
from ilsvrc_assets.bounding_boxes import BoundingBoxError
from ilsvrc_assets.cli import failure_message
from ilsvrc_assets.definitions import JOB_NAMES
from ilsvrc_assets_tests.helpers import rewrite_tar, run_job, variant_release


def _hostile(kind: str, name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "/etc/shadow"
    elif kind == "device":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3  # /dev/null's numbers
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE
    return info


# (kind, member name as written in the archive)
HOSTILE = [
    ("absolute", "/tmp/ilsvrc-escape/{name}"),
    ("dotdot", "../../ilsvrc-escape/{name}"),
    ("dotdot-inside", "val/../../{name}"),
    ("symlink", "{name}"),
    ("hardlink", "{name}"),
    ("device", "{name}"),
    ("fifo", "{name}"),
]


def _write(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _member(kind: str, pattern: str, name: str) -> tuple[tarfile.TarInfo, bytes]:
    member = pattern.format(name=name)
    info = (
        _hostile(kind, member)
        if kind in ("symlink", "hardlink", "device", "fifo")
        else tarfile.TarInfo(member)
    )
    return info, b"\xff\xd8\xff\xd9"


@pytest.mark.parametrize("kind, pattern", HOSTILE, ids=[k for k, _ in HOSTILE])
def test_validation_archive(kind, pattern, tmp_path):
    name = "ILSVRC2012_val_00000001.JPEG"
    archive = _write(tmp_path / release.IMG_VAL.name, [_member(kind, pattern, name)])
    with pytest.raises(ArchiveError) as caught:
        archives.index_validation_archive(archive, ["n01440764"])
    message = str(caught.value)
    assert message.startswith(f"{release.IMG_VAL.name}: member {pattern.format(name=name)!r}")
    assert "outside the archive" in message or "not a regular file" in message


@pytest.mark.parametrize("kind, pattern", HOSTILE, ids=[k for k, _ in HOSTILE])
def test_inner_tar_of_the_train_archive(kind, pattern, tmp_path):
    name = "n01440764_1.JPEG"
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info, data = _member(kind, pattern, name)
        if info.isreg():
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        else:
            tar.addfile(info)
    outer = tarfile.TarInfo("n01440764.tar")
    archive = _write(tmp_path / release.IMG_TRAIN.name, [(outer, inner.getvalue())])
    with pytest.raises(ArchiveError) as caught:
        archives.index_train_archive(archive, {"n01440764"})
    assert str(caught.value).startswith(
        f"{release.IMG_TRAIN.name} member n01440764.tar: member {pattern.format(name=name)!r}"
    )


@pytest.mark.parametrize("kind, pattern", HOSTILE, ids=[k for k, _ in HOSTILE])
def test_bounding_box_archive(kind, pattern, tmp_path):
    name = "n01440764/n01440764_1.xml"
    archive = _write(tmp_path / release.BBOX_TRAIN.name, [_member(kind, pattern, name)], mode="w:gz")
    with pytest.raises(BoundingBoxError) as caught:
        bounding_boxes.read_train_boxes(archive, {"n01440764"}, workers=1)
    assert str(caught.value).startswith(f"{release.BBOX_TRAIN.name} member {pattern.format(name=name)}")


def test_a_hostile_release_writes_nothing_outside_data(sample_release, tmp_path, settings_for):
    """Through the graph: a validation archive whose first image is a symlink to /etc/passwd."""

    def link_first(info: tarfile.TarInfo, data: bytes):
        if info.name.endswith("ILSVRC2012_val_00000001.JPEG"):
            return [(_hostile("symlink", info.name), b"")]
        return [(info, data)]

    local = variant_release(
        sample_release, tmp_path / "release", img_val=lambda src, dst: rewrite_tar(src, dst, link_first)
    )
    settings = settings_for(local)
    outside_before = _files_outside(tmp_path, settings.data_dir)
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        assets = ["validation_archive", "devkit_archive", "synsets", "validation_labels", "validation_images"]
        result = run_job(settings, instance, JOB_NAMES["inputs"], [*assets, "validation_tree"])
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "validation_images"
    message = failure_message(failure.step_failure_data)
    assert "ILSVRC2012_val_00000001.JPEG" in message and "not a regular file (link)" in message
    assert not settings.validation_dir.exists()  # blocked, never started
    assert _files_outside(tmp_path, settings.data_dir) - outside_before <= {"home"}


def _files_outside(root: Path, data: Path) -> set[str]:
    """Top-level view of what exists under ``root`` besides <data> (and a few well-known places)."""
    found = {p.name for p in root.iterdir() if p != data}
    for escape in (Path("/tmp/ilsvrc-escape"), root.parent / "ilsvrc-escape"):
        if escape.exists():
            found.add(str(escape))
    return found


class _Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RecordingHandler)
        self.paths: list[str] = []


class _RecordingHandler(BaseHTTPRequestHandler):
    server: _Recorder

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        body = b'<!ENTITY leak "exfiltrated">'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_xml_external_entities_never_reach_the_network():
    server = _Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        attacks = {
            "general": f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "{url}/general">]>'
            "<annotation>&x;</annotation>",
            "parameter": f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY % p SYSTEM "{url}/parameter"> %p;]>'
            "<annotation>&leak;</annotation>",
            "external DTD": f'<?xml version="1.0"?><!DOCTYPE annotation SYSTEM "{url}/dtd"><annotation/>',
            "xinclude": '<annotation xmlns:xi="http://www.w3.org/2001/XInclude">'
            f'<xi:include href="{url}/xinclude" parse="text"/></annotation>',
        }
        for what, xml in attacks.items():
            try:
                annotation = bounding_boxes.parse_annotation(xml.encode(), f"attack {what}")
            except BoundingBoxError as e:
                assert str(e).startswith(f"attack {what}: "), e
            else:
                assert "exfiltrated" not in repr(annotation), what
        assert server.paths == [], f"the parser fetched {server.paths}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
