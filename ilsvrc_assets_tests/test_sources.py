import pytest

from ilsvrc_assets import fileio, release, sources
from ilsvrc_assets.archives import ChecksumCache


def _fake_release(folder, with_md5sums=True):
    folder.mkdir()
    sums = {}
    for archive in release.ARCHIVES:
        (folder / archive.name).write_bytes(archive.name.encode())
        sums[archive.name] = fileio.md5_file(folder / archive.name)
    if with_md5sums:
        (folder / "MD5SUMS").write_text(fileio.format_md5sums(sums))
    return sums


def test_local_source_verifies_against_md5sums_beside_the_archives(tmp_path):
    sums = _fake_release(tmp_path / "release")
    source = sources.LocalSource(tmp_path / "release")
    fetched = source.fetch(release.DEVKIT, ChecksumCache(tmp_path / "c.json"), print)
    assert fetched.path == tmp_path / "release" / release.DEVKIT.name  # used in place
    assert fetched.md5 == fetched.expected_md5 == sums[release.DEVKIT.name]
    assert fetched.expected_from.endswith("MD5SUMS") and not fetched.official


def test_local_source_without_md5sums_expects_the_official_md5(tmp_path):
    _fake_release(tmp_path / "release", with_md5sums=False)
    fetched = sources.LocalSource(tmp_path / "release").fetch(release.IMG_VAL, None, print)
    assert fetched.expected_md5 == release.IMG_VAL.md5 == "29b22e2961454d5413ddabcf34fc5622"
    assert fetched.expected_from == "the official release"


def test_missing_archive_and_folder_say_what_to_do(tmp_path):
    with pytest.raises(sources.SourceError, match="ILSVRC_LOCAL_DIR"):
        sources.LocalSource(tmp_path / "nowhere").locate(release.IMG_TRAIN, print)
    (tmp_path / "empty").mkdir()
    with pytest.raises(sources.SourceError, match="ILSVRC2012_img_train.tar"):
        sources.LocalSource(tmp_path / "empty").locate(release.IMG_TRAIN, print)


def test_sample_source_is_a_local_source_over_the_cached_sample(sample_release):
    source = sources.SampleSource(sample_release)
    fetched = source.fetch(release.BBOX_VAL, None, print)
    assert fetched.md5 == fetched.expected_md5
    assert "sample" in source.describe()
