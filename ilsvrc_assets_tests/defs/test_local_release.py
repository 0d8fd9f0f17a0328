"""A stand-in release packed by other means than the sample generator gives the same outputs.

Real archives come from other tools: member names with './', directory entries, PAX or ustar
headers, another member order, md5sum's binary mode. The graph must not care.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from dagster import DagsterInstance

from ilsvrc_assets import release, validation_tree
from ilsvrc_assets.bounding_boxes import read_table
from ilsvrc_assets_tests.helpers import ALL_CHECKS, build_all, evaluations, make_settings

pytestmark = pytest.mark.long(seconds=135)  # conftest: the long files start first


def _members(path: Path, mode: str) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(str(path), mode) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar if m.isreg()]


def _pack(members, fmt: int, prefix: str = "./", directories: bool = True, sort: bool = False) -> bytes:
    """An uncompressed tar as `tar -C dir -cf x.tar .` would make it: './' names, folder entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        if directories:
            root = tarfile.TarInfo(prefix or ".")
            root.type = tarfile.DIRTYPE
            tar.addfile(root)
        added_dirs = set()
        for info, data in sorted(members, key=lambda m: m[0].name) if sort else members:
            folder = info.name.rpartition("/")[0]
            if directories and folder and folder not in added_dirs:
                added_dirs.add(folder)
                entry = tarfile.TarInfo(prefix + folder)
                entry.type = tarfile.DIRTYPE
                tar.addfile(entry)
            new = tarfile.TarInfo(prefix + info.name)
            new.size, new.mtime, new.uname = len(data), 1_700_000_000, "someone"
            tar.addfile(new, io.BytesIO(data))
    return buf.getvalue()


def repack(sample: Path, dest: Path) -> Path:
    dest.mkdir()
    # Train: './'-prefixed PAX outer tar, inner tars re-made in ustar format, synsets sorted.
    outer = []
    for info, data in _members(sample / release.IMG_TRAIN.name, "r:"):
        inner = _members_from_bytes(data)
        outer.append((info, _pack(inner, tarfile.USTAR_FORMAT, prefix="", directories=False)))
    (dest / release.IMG_TRAIN.name).write_bytes(_pack(outer, tarfile.PAX_FORMAT, sort=True))
    # Validation: sorted members, ustar, './' names.
    val = _members(sample / release.IMG_VAL.name, "r:")
    (dest / release.IMG_VAL.name).write_bytes(_pack(val, tarfile.USTAR_FORMAT, sort=True))
    # The compressed ones: './' names, folder entries, another compression level.
    for archive in (release.DEVKIT, release.BBOX_TRAIN, release.BBOX_VAL):
        members = _members(sample / archive.name, "r:gz")
        (dest / archive.name).write_bytes(gzip.compress(_pack(members, tarfile.GNU_FORMAT), compresslevel=9))
    lines = [f"{hashlib.md5((dest / a.name).read_bytes()).hexdigest()} *{a.name}" for a in release.ARCHIVES]
    (dest / "MD5SUMS").write_text("\n".join(lines) + "\n")
    return dest


def _members_from_bytes(data: bytes):
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [(m, tar.extractfile(m).read()) for m in tar if m.isreg()]


def test_repacked_release_gives_identical_outputs(sample_release, built_sample_graph, tmp_path):
    reference_settings = built_sample_graph[0]
    folder = repack(sample_release, tmp_path / "release")
    settings = make_settings(tmp_path / "data", folder)
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        results, failed = build_all(settings, instance)
    assert failed == []
    found = evaluations(*results)
    assert set(found) == ALL_CHECKS and all(e.passed for e in found.values())

    # Same shards, byte for byte: the assignment and the records do not depend on packaging.
    for split in release.SPLITS:
        for name in settings.shard_names(split):
            mine = (settings.tfrecords_dir / name).read_bytes()
            theirs = (reference_settings.tfrecords_dir / name).read_bytes()
            assert hashlib.md5(mine).digest() == hashlib.md5(theirs).digest(), name
    assert validation_tree.scan(settings.validation_dir) == validation_tree.scan(
        reference_settings.validation_dir
    )
    columns = ["split", "image", "box", "xmin", "ymin", "xmax", "ymax", "kept"]
    mine = read_table(settings.bounding_boxes_parquet)[columns].reset_index(drop=True)
    theirs = read_table(reference_settings.bounding_boxes_parquet)[columns].reset_index(drop=True)
    assert mine.equals(theirs)
    assert settings.bounding_boxes_csv.read_text() == reference_settings.bounding_boxes_csv.read_text()
