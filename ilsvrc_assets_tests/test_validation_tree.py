import io
import tarfile

import pytest
from PIL import Image

from ilsvrc_assets import archives, class_folders, release, validation_tree
from ilsvrc_assets.archives import ArchiveError
from ilsvrc_assets.sources.official import ArchiveReader


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8 + seed % 5, 9), (seed % 256, 0, 0)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def small_release(tmp_path):
    labels = ["n01440764", "n01443537", "n01440764", "n01443537"]
    path = tmp_path / "ILSVRC2012_img_val.tar"
    with tarfile.open(path, "w") as tar:
        for number in (3, 1, 4, 2):  # not sorted, like the real archive
            data = _jpeg(number)
            info = tarfile.TarInfo(release.validation_filename(number))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, labels, archives.index_validation_archive(path, labels)


def test_build_sorts_images_into_synset_folders_and_reruns(small_release, tmp_path):
    path, labels, index = small_release
    dest = tmp_path / "validation"
    stats = validation_tree.build(ArchiveReader(path), index, dest)
    assert (stats.images, stats.written, stats.skipped) == (4, 4, 0)
    tree = validation_tree.scan(dest)
    assert tree == {
        "n01440764": ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000003.JPEG"],
        "n01443537": ["ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000004.JPEG"],
    }
    assert (dest / "n01443537" / "ILSVRC2012_val_00000004.JPEG").read_bytes() == _jpeg(4)
    assert validation_tree.problems(tree, labels)[:1] == ["4 images in the tree, expected 50000"]

    # A second run writes nothing; an image deleted meanwhile is restored; a misplaced one removed.
    (dest / "n01440764" / "ILSVRC2012_val_00000001.JPEG").unlink()
    (dest / "n01443537" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"stale")
    stats = validation_tree.build(ArchiveReader(path), index, dest)
    assert (stats.written, stats.skipped, stats.removed) == (1, 3, 1)
    assert validation_tree.scan(dest) == tree


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_write_the_same_tree_and_stop_at_a_bad_member(tmp_path, monkeypatch, threads):
    monkeypatch.setattr(class_folders, "IMAGES_PER_THREAD", 1)
    labels = [release.challenge_synsets()[i % 7] for i in range(60)]
    path = tmp_path / "ILSVRC2012_img_val.tar"
    with tarfile.open(path, "w") as tar:
        for number in range(1, 61):
            data = _jpeg(number) if number != 45 else b"GIF89a not a jpeg"
            info = tarfile.TarInfo(release.validation_filename(number))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    index = archives.index_validation_archive(path, labels)
    seen = []
    dest = tmp_path / "validation"
    with pytest.raises(ValueError, match="member ILSVRC2012_val_00000045.JPEG"):
        validation_tree.build(
            ArchiveReader(path), index, dest, lambda done, total: seen.append(done), threads=threads
        )
    # What was written is whole and in place; no temporary file is left.
    for image in dest.rglob("*"):
        if image.is_file():
            assert not image.name.startswith("."), image
            number = int(image.stem.rsplit("_", 1)[1])
            assert image.read_bytes() == _jpeg(number) and image.parent.name == labels[number - 1]

    good = index[index["filename"] != release.validation_filename(45)]
    stats = validation_tree.build(
        ArchiveReader(path), good, dest, lambda done, total: seen.append(done), threads=threads
    )
    assert stats.images == stats.written + stats.skipped == 59
    tree = validation_tree.scan(dest)
    assert sum(len(names) for names in tree.values()) == 59
    assert all(labels[int(n[15:23]) - 1] == synset for synset, names in tree.items() for n in names)
    assert seen[-1] == 59


def test_member_that_is_not_an_image_is_named(tmp_path):
    path = tmp_path / "ILSVRC2012_img_val.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(release.validation_filename(1))
        data = b"<html>login required</html>"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    index = archives.index_validation_archive(path, ["n01440764"])
    dest = tmp_path / "validation"
    with pytest.raises(ValueError, match="ILSVRC2012_img_val.tar member ILSVRC2012_val_00000001.JPEG"):
        validation_tree.build(ArchiveReader(path), index, dest)
    assert validation_tree.scan(dest) in ({}, {"n01440764": []})


def test_truncated_archive_fails_without_partial_files(small_release, tmp_path):
    path, labels, index = small_release
    index = index.copy()
    index.loc[0, "size"] = 10**6  # pretend the member runs past the end of the file
    dest = tmp_path / "validation"
    with pytest.raises(ArchiveError, match="cut short"):
        validation_tree.build(ArchiveReader(path), index, dest)
    leftovers = [p for p in dest.rglob("*") if p.is_file() and p.stat().st_size != 0]
    for p in leftovers:  # everything present is a complete image, under its final name
        assert p.read_bytes()[:2] == b"\xff\xd8"


def test_problems_against_the_shipped_label_file():
    labels = release.validation_synsets()
    tree: dict[str, list[str]] = {}
    for i, synset in enumerate(labels, start=1):
        tree.setdefault(synset, []).append(release.validation_filename(i))
    assert validation_tree.problems(tree) == []
    moved = tree[labels[0]].pop(0)
    other = labels[-1] if labels[-1] != labels[0] else labels[1]
    tree[other].append(moved)
    found = validation_tree.problems(tree)
    assert any(f"missing: {labels[0]}/{moved}" in p for p in found)
    assert any(f"does not belong: {other}/{moved}" in p for p in found)
    assert any(p.startswith(f"{labels[0]}: 49 images") for p in found)
