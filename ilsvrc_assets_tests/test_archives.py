import concurrent.futures
import io
import multiprocessing
import tarfile
from pathlib import Path

import pytest

from ilsvrc_assets import archives
from ilsvrc_assets.archives import ArchiveError, ChecksumCache


def _tar_bytes(members: dict[str, bytes], prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _train_archive(path, synsets: dict[str, dict[str, bytes]], prefix: str = ""):
    inner = {f"{wnid}.tar": _tar_bytes(files) for wnid, files in synsets.items()}
    path.write_bytes(_tar_bytes(inner, prefix))
    return path


SYNSETS = {
    "n01530575": {"n01530575_10086.JPEG": b"\xff\xd8a" * 100, "n01530575_7.JPEG": b"\xff\xd8b" * 7},
    "n01440764": {"n01440764_3.JPEG": b"\xff\xd8c" * 3000},
}


@pytest.mark.parametrize("prefix", ["", "./"])
def test_train_index_offsets_point_at_the_image_bytes(tmp_path, prefix):
    path = _train_archive(tmp_path / "ILSVRC2012_img_train.tar", SYNSETS, prefix)
    index = archives.index_train_archive(path, set(SYNSETS))
    assert list(index["synset"]) == ["n01530575", "n01530575", "n01440764"]  # archive order
    for filename, offset, size in zip(index["filename"], index["offset"], index["size"]):
        wnid = filename.split("_")[0]
        assert archives.read_member(path, offset, size, filename) == SYNSETS[wnid][filename]


def test_train_index_refuses_unknown_synsets_and_odd_members(tmp_path):
    path = _train_archive(tmp_path / "t.tar", SYNSETS)
    with pytest.raises(ArchiveError, match="n01530575.tar.*not one of the 1,000"):
        archives.index_train_archive(path, {"n01440764"})
    path.write_bytes(_tar_bytes({"README.txt": b"hello"}))
    with pytest.raises(ArchiveError, match="README.txt.*not an inner synset tar"):
        archives.index_train_archive(path, set(SYNSETS))
    path.write_bytes(_tar_bytes({"n01440764.tar": _tar_bytes({"n01440764_1.png": b"x"})}))
    with pytest.raises(ArchiveError, match="n01440764_1.png"):
        archives.index_train_archive(path, set(SYNSETS))
    path.write_bytes(_tar_bytes({"n01440764.tar": b"this is not a tar at all" * 40}))
    with pytest.raises(ArchiveError, match="n01440764.tar"):
        archives.index_train_archive(path, set(SYNSETS))


def test_train_index_refuses_a_repeated_image_and_accepts_one_in_a_folder(tmp_path):
    image = b"\xff\xd8x"
    inner = _tar_bytes({"n01440764_3.JPEG": image, "n01440764_4.JPEG": image, "./n01440764_3.JPEG": image})
    path = tmp_path / "ILSVRC2012_img_train.tar"
    path.write_bytes(_tar_bytes({"n01440764.tar": inner}))
    with pytest.raises(ArchiveError, match="n01440764.tar: image 'n01440764_3.JPEG' appears twice"):
        archives.index_train_archive(path, {"n01440764"})
    path.write_bytes(_tar_bytes({"n01440764.tar": _tar_bytes({"d/n01440764_3.JPEG": image})}))
    assert list(archives.index_train_archive(path, {"n01440764"})["filename"]) == ["n01440764_3.JPEG"]


def test_truncated_archive_is_named(tmp_path):
    path = _train_archive(tmp_path / "ILSVRC2012_img_train.tar", SYNSETS)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match="ILSVRC2012_img_train.tar"):
        archives.index_train_archive(path, set(SYNSETS))


def test_links_and_escaping_names_are_refused(tmp_path):
    path = tmp_path / "ILSVRC2012_img_val.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("ILSVRC2012_val_00000001.JPEG")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ArchiveError, match="not a regular file"):
        archives.index_validation_archive(path, ["n01440764"])
    path.write_bytes(_tar_bytes({"../ILSVRC2012_val_00000001.JPEG": b"x"}))
    with pytest.raises(ArchiveError, match="outside the archive"):
        archives.index_validation_archive(path, ["n01440764"])


def test_validation_index(tmp_path):
    path = tmp_path / "ILSVRC2012_img_val.tar"
    path.write_bytes(
        _tar_bytes({"ILSVRC2012_val_00000002.JPEG": b"two", "ILSVRC2012_val_00000001.JPEG": b"one!"})
    )
    index = archives.index_validation_archive(path, ["n01440764", "n01530575"])
    assert list(index["number"]) == [2, 1]
    assert list(index["synset"]) == ["n01530575", "n01440764"]
    row = index.iloc[1]
    assert archives.read_member(path, row["offset"], row["size"], row["filename"]) == b"one!"
    with pytest.raises(ArchiveError, match="no ground-truth label"):
        archives.index_validation_archive(path, ["n01440764"])
    path.write_bytes(
        _tar_bytes({"ILSVRC2012_val_00000001.JPEG": b"a", "./ILSVRC2012_val_00000001.JPEG": b"b"})
    )
    with pytest.raises(ArchiveError, match="appears twice"):
        archives.index_validation_archive(path, ["n01440764"])
    path.write_bytes(_tar_bytes({"val.txt": b"a"}))
    with pytest.raises(ArchiveError, match="val.txt.*not a validation image"):
        archives.index_validation_archive(path, ["n01440764"])


def test_checksum_cache_reuses_only_unchanged_files(tmp_path):
    file = tmp_path / "a.tar"
    file.write_bytes(b"abc")
    cache = ChecksumCache(tmp_path / "state" / "checksums.json")
    digest, cached = archives.md5_of(file, cache)
    assert (digest, cached) == ("900150983cd24fb0d6963f7d28e17f72", False)
    assert archives.md5_of(file, cache) == (digest, True)
    file.write_bytes(b"abcd")
    assert archives.md5_of(file, cache)[1] is False


def _put_many(cache_path: Path, files: list[Path]) -> None:
    cache = ChecksumCache(cache_path)
    for file in files:
        cache.put(file, "0" * 32)


def test_checksum_cache_keeps_every_entry_when_processes_write_at_once(tmp_path):
    # prepare_inputs computes the archives' MD5s in several processes at once.
    files = [tmp_path / f"{n}.tar" for n in range(80)]
    for file in files:
        file.write_bytes(b"x")
    path = tmp_path / "state" / "checksums.json"
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(4, mp_context=context) as pool:
        list(pool.map(_put_many, [path] * 4, [files[n::4] for n in range(4)]))
    assert all(ChecksumCache(path).get(file) == "0" * 32 for file in files)


def test_checksum_problem_says_what_to_do():
    assert archives.checksum_problem("x.tar", "a" * 32, "a" * 32) is None
    message = archives.checksum_problem("ILSVRC2012_img_val.tar", "29b2" + "0" * 28, "7b55" + "0" * 28)
    assert (
        "ILSVRC2012_img_val.tar" in message
        and "29b2" in message
        and "7b55" in message
        and "delete" in message
    )
