"""Write, audit, publish at the level of the build: a build that fails, is blocked or is killed never
changes what readers see (``<data>/validation/``, ``<data>/tfrecords/``, ``<data>/tfrecords-index/``);
a refresh shows readers the old version until the new one is published whole; never a mix."""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from ilsvrc_assets import fileio, release, versions
from ilsvrc_assets_tests.helpers import (
    build_all,
    build_env,
    build_to_the_end,
    kill_when,
    make_settings,
    rewrite_tar,
    rgb_jpeg,
    start_build,
    variant_release,
)

pytestmark = pytest.mark.long(seconds=200)  # conftest: the long files start first

MANIFEST = "manifest.json"
READERS = ("validation", "tfrecords", "tfrecords-index")
CHANGED = release.validation_filename(7)  # the member each variant changes


def seen_by_readers(data_dir: Path) -> dict[str, dict[str, str]]:
    """{reader folder: {path: MD5}} of every file a reader finds under ``<data>/<folder>`` (written
    here, independently of the listing the build writes; an absent folder is empty), the completeness
    marker left out (it names its version: two builds of the same outputs differ in it)."""
    found: dict[str, dict[str, str]] = {}
    for folder in READERS:
        root = data_dir / folder
        found[folder] = {
            os.path.relpath(os.path.join(top, name), root): hashlib.md5(
                Path(top, name).read_bytes()
            ).hexdigest()
            for top, _dirs, files in os.walk(root)
            for name in files
            if not (top == str(root) and name in versions.MARKER_FILES)
        }
    return found


def _replace_members(names: set[str], data: bytes) -> object:
    def edit(info: tarfile.TarInfo, original: bytes):
        return [(info, data if info.name in names else original)]

    return lambda src, dst: rewrite_tar(src, dst, edit)


def not_an_image(src: Path, dst: Path) -> None:
    _replace_members({CHANGED}, b"<!DOCTYPE html><html><body>Please log in</body></html>\n")(src, dst)


def other_images(src: Path, dst: Path) -> None:
    """The first 1,000 validation images replaced (spread over every validation shard)."""
    _replace_members({release.validation_filename(i) for i in range(1, 1001)}, rgb_jpeg(48, 32))(src, dst)


def test_a_rebuild_from_a_bad_validation_archive_leaves_readers_the_first_build(sample_release, tmp_path):
    from dagster import DagsterInstance

    good = variant_release(sample_release, tmp_path / "good")
    bad = variant_release(sample_release, tmp_path / "bad", img_val=not_an_image)
    settings = make_settings(tmp_path / "data", good)
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        _, failed = build_all(settings, instance)
        assert failed == []
        first = seen_by_readers(settings.data_dir)
        assert len(first["validation"]) == release.NUM_VALIDATION_IMAGES

        _, failed = build_all(replace(settings, local_dir=bad), instance)

    assert failed and CHANGED in failed[0], failed
    assert seen_by_readers(settings.data_dir) == first
    for output in ("validation_tree", "tfrecords"):
        assert versions.published_problems(settings, output, hash_files=True) == []
    # The failed version waits, unpublished, for the next build to go on with.
    assert versions.staging_version(settings, versions.OUTPUTS["validation_tree"]) is not None


def test_a_first_build_that_fails_publishes_nothing(sample_release, tmp_path):
    from dagster import DagsterInstance

    bad = variant_release(sample_release, tmp_path / "bad", img_val=not_an_image)
    settings = make_settings(tmp_path / "data", bad)
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        _, failed = build_all(settings, instance)
    assert failed and CHANGED in failed[0], failed
    for folder in READERS:
        assert not os.path.lexists(settings.data_dir / folder), folder
    # What was written before the bad member is in the unpublished version, not where readers look.
    staged = versions.staging_version(settings, versions.OUTPUTS["validation_tree"])
    assert staged is not None and any((staged / "validation").iterdir())


def test_a_refresh_killed_at_several_points_shows_readers_one_version_or_the_other(sample_release, tmp_path):
    """The validation archive changes (1,000 images): the tree and the validation shards change.
    The refresh is killed while the tree is written, while the shards are written and between the
    two publications; at each kill every reader folder is exactly the old version or the new one."""
    local = tmp_path / "release"
    variant_release(sample_release, local)
    settings = make_settings(tmp_path / "data", local, workers=1)
    env = {
        **build_env(settings, tmp_path / "home"),
        "ILSVRC_SOURCE": "local",
        "ILSVRC_LOCAL_DIR": str(local),
        "ILSVRC_WORKERS": "1",  # shards one after another: a wide window for the kill
    }

    build_to_the_end(env, tmp_path / "first.log")
    old = seen_by_readers(settings.data_dir)

    # The refresh: a new validation archive (its MD5SUMS line updated) where the old one was.
    archive = local / release.IMG_VAL.name
    archive.unlink()
    other_images(sample_release / release.IMG_VAL.name, archive)
    sums = fileio.read_md5sums(local / "MD5SUMS")
    sums[archive.name] = fileio.md5_file(archive)
    (local / "MD5SUMS").write_text(fileio.format_md5sums(sums))

    root = settings.data_dir / versions.VERSIONS
    shards = root / "tfrecords"

    def new_in_staging(path: str) -> bool:
        """Whether the staging version of the shards holds a new file at ``path`` (not the published one's)."""
        try:
            return (
                os.stat(shards / versions.STAGING / path).st_ino
                != os.stat(shards / versions.CURRENT / path).st_ino
            )
        except FileNotFoundError:
            return False

    moments = {
        "writing the tree": lambda: (root / "validation_tree" / versions.STAGING).is_symlink(),
        "writing the shards": lambda: any(
            new_in_staging(f"tfrecords/{name}") for name in settings.shard_names("validation")
        ),
        "read back, not yet published": lambda: new_in_staging(f"tfrecords/{MANIFEST}"),
    }
    observed = []
    for moment, ready in moments.items():
        log = tmp_path / f"{moment}.log"
        kill_when(start_build(env, log), ready, timeout=300, log=log)
        observed.append((moment, seen_by_readers(settings.data_dir)))

    build_to_the_end(env, tmp_path / "last.log")
    new = seen_by_readers(settings.data_dir)
    for folder in READERS:
        assert new[folder] != old[folder], f"{folder}: the refresh changed nothing"
    for moment, seen in observed:
        for folder in READERS:
            assert seen[folder] in (old[folder], new[folder]), f"killed {moment}: {folder} is a mix"
        # the shards and their indexes are one output: never one version of each
        assert (seen["tfrecords"] == old["tfrecords"]) == (seen["tfrecords-index"] == old["tfrecords-index"])
    assert observed[0][1] == old, "killed while writing the tree, readers must see the old version"
    for output in ("validation_tree", "tfrecords"):
        assert versions.published_problems(settings, output, hash_files=True) == []
