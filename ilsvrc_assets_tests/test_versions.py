"""Write, audit, publish (ilsvrc_assets.versions): readers see the published version, whole, or the one
before it; a version reuses the files it shares with the published one by hard links."""

import json
import os
from pathlib import Path

import pytest

from ilsvrc_assets import fileio, versions
from ilsvrc_assets_tests.helpers import make_settings

TREE = versions.OUTPUTS["validation_tree"]
SHARDS = versions.OUTPUTS["tfrecords"]


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path / "data", None)


def write(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        fileio.atomic_write_bytes(folder / name, data)


def seen(folder: Path) -> dict[str, bytes]:
    """What a reader globbing ``folder`` finds (the completeness marker left out)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not (p.parent == folder and p.name in versions.MARKER_FILES)
    }


FIRST = {"n01/a.JPEG": b"a1", "n01/b.JPEG": b"b1", "n02/c.JPEG": b"c1" * 1000}


def test_nothing_is_visible_until_published(settings):
    staged = versions.working(settings, "validation")
    write(staged, FIRST)
    reader = settings.data_dir / "validation"
    assert not reader.exists()  # a build that fails here has published nothing
    assert versions.judged(settings, "validation") == staged  # the checks judge what was written

    done = versions.publish(settings, "validation_tree")

    assert reader.is_symlink() and seen(reader) == FIRST
    assert (done.version, done.files, done.hashed, done.already) == (1, 3, 3, False)
    marker = json.loads((reader / versions.MARKER).read_text())
    assert marker["files"] == 3 and marker["bytes"] == sum(map(len, FIRST.values()))
    assert versions.published_problems(settings, "validation_tree", hash_files=True) == []
    assert versions.staging_version(settings, TREE) is None
    assert versions.judged(settings, "validation").resolve() == reader.resolve()


def test_listing_has_every_file_with_its_size_and_md5_and_the_marker_its_md5(settings):
    write(versions.working(settings, "validation"), FIRST)
    versions.publish(settings, "validation_tree")
    reader = settings.data_dir / "validation"
    listing = (reader / versions.LISTING).read_text().splitlines()
    assert listing[0] == "path\tbytes\tmd5"
    rows = [line.split("\t") for line in listing[1:]]
    assert [r[0] for r in rows] == [f"validation/{n}" for n in sorted(FIRST)]
    for path, size, md5 in rows:
        file = settings.data_dir / path
        assert (int(size), md5) == (file.stat().st_size, fileio.md5_file(file))
    marker = json.loads((reader / versions.MARKER).read_text())
    assert marker["listing_md5"] == fileio.md5_file(reader / versions.LISTING)


def test_a_new_version_shares_unchanged_files_and_leaves_the_published_ones_alone(settings):
    write(versions.working(settings, "validation"), FIRST)
    versions.publish(settings, "validation_tree")
    reader = settings.data_dir / "validation"
    before = seen(reader)

    staged = versions.working(settings, "validation")
    assert staged != reader.resolve()
    # Every file is there, as the same inode: no copy, no disk.
    for name in FIRST:
        assert (staged / name).stat().st_ino == (reader / name).stat().st_ino
    assert not (staged / versions.MARKER).exists()
    # The stages replace a file by rename and delete what does not belong.
    write(staged, {"n01/a.JPEG": b"a2"})
    (staged / "n01/b.JPEG").unlink()
    write(staged, {"n03/d.JPEG": b"d2"})

    assert seen(reader) == before  # readers still see version 1, unchanged
    done = versions.publish(settings, "validation_tree")
    assert seen(reader) == {"n01/a.JPEG": b"a2", "n02/c.JPEG": b"c1" * 1000, "n03/d.JPEG": b"d2"}
    assert done.hashed == 2  # the shared file's MD5 came from version 1's listing
    assert done.removed_versions == (1,) and not (reader.parent.parent / "1").exists()
    assert versions.published_problems(settings, "validation_tree", hash_files=True) == []


def test_keep_versions(settings):
    for i in range(4):
        write(versions.working(settings, "validation"), {"n01/a.JPEG": b"x%d" % i})
        versions.publish(settings, "validation_tree", keep=2)
    root = settings.data_dir / versions.VERSIONS / "validation_tree"
    assert sorted(p.name for p in root.iterdir() if p.name.isdecimal()) == ["3", "4"]


def test_a_rerun_goes_on_with_the_unpublished_version(settings):
    write(versions.working(settings, "validation"), FIRST)
    versions.publish(settings, "validation_tree")
    staged = versions.working(settings, "validation")
    write(staged, {"n01/a.JPEG": b"half done"})
    # A later run (another process) finds the same staging version, with what was written.
    assert versions.working(settings, "validation") == staged
    assert (versions.working(settings, "validation") / "n01/a.JPEG").read_bytes() == b"half done"


def test_killed_between_swap_and_cleanup_counts_as_published(settings):
    write(versions.working(settings, "validation"), FIRST)
    versions.publish(settings, "validation_tree")
    root = settings.data_dir / versions.VERSIONS / "validation_tree"
    os.symlink("1", root / versions.STAGING)  # left behind: staging names the published version
    assert versions.staging_version(settings, TREE) is None
    assert versions.working(settings, "validation") == root / "2" / "validation"
    # and a version killed while being made is removed by the next
    (root / "7.seeding" / "validation").mkdir(parents=True)
    versions.publish(settings, "validation_tree")
    versions.working(settings, "validation")
    assert not (root / "7.seeding").exists()


def test_publish_without_a_staged_version_is_a_no_op(settings):
    with pytest.raises(FileNotFoundError, match="nothing written to publish"):
        versions.publish(settings, "validation_tree")
    write(versions.working(settings, "validation"), FIRST)
    versions.publish(settings, "validation_tree")
    again = versions.publish(settings, "validation_tree")
    assert (again.already, again.version, again.files) == (True, 1, 3)


def test_shards_and_their_indexes_change_together(settings):
    shards = versions.working(settings, "tfrecords")
    indexes = versions.working(settings, "tfrecords-index")
    assert shards.parent == indexes.parent  # one version holds both
    write(shards, {"train-00000-of-00001": b"records"})
    write(indexes, {"train-00000-of-00001.idx": b"0 7\n"})
    done = versions.publish(settings, "tfrecords")
    assert done.files == 2
    assert (settings.data_dir / "tfrecords-index").resolve().parent == (
        settings.data_dir / "tfrecords"
    ).resolve().parent
    # Both readers' links go through the one `current` link: one rename swaps both.
    assert os.readlink(settings.data_dir / "tfrecords") == ".versions/tfrecords/current/tfrecords"


def test_known_md5s_are_used_when_size_and_time_match(settings):
    shards = versions.working(settings, "tfrecords")
    write(shards, {"train-00000-of-00001": b"records"})
    st = (shards / "train-00000-of-00001").stat()
    known = {"tfrecords/train-00000-of-00001": (st.st_size, st.st_mtime_ns, "0" * 32)}
    done = versions.publish(settings, "tfrecords", known)
    assert done.hashed == 0
    listing = (settings.data_dir / "tfrecords" / versions.LISTING).read_text()
    assert "tfrecords/train-00000-of-00001\t7\t" + "0" * 32 in listing
    # A known MD5 for a file changed since is not used.
    shards = versions.working(settings, "tfrecords")
    write(shards, {"train-00000-of-00001": b"records2"})
    assert versions.publish(settings, "tfrecords", known).hashed == 1


def test_a_folder_from_a_build_before_versions_becomes_the_first_version(settings):
    legacy = settings.data_dir / "validation"
    write(legacy, FIRST)
    inode = (legacy / "n01/a.JPEG").stat().st_ino
    staged = versions.working(settings, "validation")
    assert (staged / "n01/a.JPEG").stat().st_ino == inode
    versions.publish(settings, "validation_tree")
    assert legacy.is_symlink() and seen(legacy) == FIRST
    assert [p.name for p in settings.data_dir.iterdir() if p.name.startswith(".validation")] == []


def test_what_readers_see_is_checked_against_the_listing(settings):
    write(versions.working(settings, "validation"), FIRST)
    versions.publish(settings, "validation_tree")
    reader = settings.data_dir / "validation"
    assert versions.published_problems(settings, "validation_tree") == []
    (reader / "n01/a.JPEG").unlink()
    (reader / "n02/stray.JPEG").write_bytes(b"x")
    (reader / "n02/c.JPEG").write_bytes(b"short")
    (reader / "n01/b.JPEG").write_bytes(b"b2")  # same size: only a hash sees it
    found = versions.published_problems(settings, "validation_tree")
    assert found == [
        "missing: validation/n01/a.JPEG",
        "changed since published: validation/n02/c.JPEG (5 bytes, listed 2,000)",
        "not in the listing: validation/n02/stray.JPEG",
    ]
    hashed = versions.published_problems(settings, "validation_tree", hash_files=True)
    assert "changed since published: validation/n01/b.JPEG (MD5 differs from the listing)" in hashed


def test_never_published_is_a_problem(settings):
    assert versions.published_problems(settings, "validation_tree")[0].startswith(
        "validation_tree: never published"
    )


def test_the_readme_marker_example_runs_and_fails_on_a_changed_file(settings, monkeypatch):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = [b.split("```")[0] for b in readme.split("```python\n")[1:]]
    (example,) = [b for b in blocks if "_published.json" in b]
    shards = versions.working(settings, "tfrecords")
    write(shards, {"train-00000-of-00001": b"records", "validation-00000-of-00001": b"more records"})
    write(versions.working(settings, "tfrecords-index"), {"train-00000-of-00001.idx": b"0 7\n"})
    versions.publish(settings, "tfrecords")
    monkeypatch.chdir(settings.data_dir.parent)  # the example's paths: data/...
    exec(compile(example, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    (settings.data_dir / "tfrecords" / "train-00000-of-00001").write_bytes(b"cut")
    with pytest.raises(AssertionError):
        exec(compile(example, "README.md", "exec"), {})  # noqa: S102


def test_no_publication_while_a_run_writes_the_version(settings):
    with versions.writing(settings, "validation") as staged:
        write(staged, FIRST)
        with pytest.raises(
            fileio.BusyError, match="validation_tree: a run is writing its unpublished version"
        ):
            versions.publish(settings, "validation_tree")
        # Another run writing the same version (another batch of shards) does not wait.
        with versions.writing(settings, "validation") as same:
            assert same == staged
    assert versions.publish(settings, "validation_tree").version == 1


def test_shards_written_after_the_manifest_read_them_are_not_published(settings):
    from ilsvrc_assets import manifest

    staged = versions.working(settings, "tfrecords")
    write(staged, {"train-00000-of-00001": b"records"})
    st = (staged / "train-00000-of-00001").stat()
    shard = {"name": "train-00000-of-00001", "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": "0" * 32}
    read = {"format": manifest.FORMAT, "splits": {"train": {"shards": [shard]}}}
    (staged / manifest.MANIFEST).write_text(json.dumps(read))
    write(staged, {"train-00000-of-00001": b"written again since"})
    with pytest.raises(
        ValueError,
        match="tfrecords: 1 file.* written since the manifest read them, e.g. tfrecords/train-00000",
    ):
        versions.make_published(settings, "tfrecords")
    assert not (settings.data_dir / "tfrecords").exists()
