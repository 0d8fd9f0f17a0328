"""Shared fixtures: the built-in sample release (generated once per test session), settings that
point the graph at it, and helpers that derive damaged variants of it for the failure tests."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from ilsvrc_assets import fileio, release, settings as settings_module
from ilsvrc_assets.settings import Settings

# Small shard counts keep the graph tests fast; the shard names keep the real pattern.
TEST_SHARDS = {"train": 8, "validation": 4}


@pytest.fixture(scope="session")
def sample_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default built-in sample: five archives in the official layout plus MD5SUMS."""
    from ilsvrc_assets import sample

    cache = os.environ.get("ILSVRC_TEST_SAMPLE_CACHE")  # reuse across local test sessions if set
    folder = Path(cache) if cache else tmp_path_factory.mktemp("sample") / "release"
    return sample.ensure_sample(folder)


@pytest.fixture(scope="session")
def built_sample_graph(sample_release: Path, tmp_path_factory: pytest.TempPathFactory):
    """The whole graph built once from the sample source, with a persistent instance.

    Yields (settings, instance, results, failed). Tests that damage its outputs restore them.
    """
    from dagster import DagsterInstance

    from ilsvrc_assets_tests.defs.graph import build_all

    root = tmp_path_factory.mktemp("graph")
    settings = make_settings(root / "data", None, source="sample", sample_dir=sample_release)
    (root / "dagster_home").mkdir()
    instance = DagsterInstance.local_temp(str(root / "dagster_home"))
    results, failed = build_all(settings, instance)
    yield settings, instance, results, failed
    instance.dispose()


@pytest.fixture(scope="module")
def built_graph_copy(built_sample_graph, tmp_path_factory: pytest.TempPathFactory):
    """(settings, a copy of the built graph's instance with all its history), for tests that launch
    runs of their own: the shared instance's run history stays as the graph tests expect it."""
    from dagster import DagsterInstance

    settings, instance, _, _ = built_sample_graph
    home = tmp_path_factory.mktemp("instance-copy") / "dagster_home"
    shutil.copytree(instance.root_directory, home)
    with DagsterInstance.local_temp(str(home)) as copy:
        yield settings, copy


def make_settings(data_dir: Path, local_dir: Path, **overrides) -> Settings:
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


@pytest.fixture
def settings_for(tmp_path: Path) -> Callable[..., Settings]:
    def make(local_dir: Path, **overrides) -> Settings:
        return make_settings(tmp_path / "data", local_dir, **overrides)

    return make


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


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def load_settings_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return settings_module.load()


def copy_file(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
