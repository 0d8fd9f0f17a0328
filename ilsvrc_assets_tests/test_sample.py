"""Tests for ilsvrc_assets.sample: the stand-in release has the official layouts and traps, and is reproducible.

Everything is checked by reading the archives back with tarfile, PIL and SciPy (not by trusting
SAMPLE.json), so these tests also document what the real checks of the preparation can rely on.
The default sample is generated once per module (about 10 s); the caching tests use a smaller spec.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import scipy.io
from lxml import etree as ET  # about twice as fast as xml.etree for the 50,000 validation files
from PIL import Image

from ilsvrc_assets import fileio, release, sample
from ilsvrc_assets.sample import SampleSpec

pytestmark = pytest.mark.long(seconds=190)  # conftest: the long files start first

DEFAULT = SampleSpec()
# Small and quick, for the tests that generate more than once.
SMALL = SampleSpec(seed=7, train_images_per_synset=(1, 1), image_size=(8, 16), jpeg_quality=50)
TRAIN_NAME = re.compile(r"^(n\d{8})_([1-9]\d*)\.JPEG$")


# --- Fixtures: generate once, read once ---------------------------------------------------------


@pytest.fixture(scope="module")
def release_dir(sample_release: Path) -> Path:
    """The session's default sample (``sample.ensure_sample``, which writes it with
    ``sample.write_release``): generating it again here would cost a worker half a minute."""
    assert sample.is_complete(sample_release, DEFAULT)
    return sample_release


@pytest.fixture(scope="module")
def info(release_dir: Path) -> dict:
    return sample.describe(release_dir)


@pytest.fixture(scope="module")
def train(release_dir: Path) -> dict:
    """Inner tar order, member names per synset and (format, mode, size) of every training image."""
    order: list[str] = []
    members: dict[str, list[str]] = {}
    images: dict[str, tuple[str, str, tuple[int, int]]] = {}
    with tarfile.open(release_dir / release.IMG_TRAIN.name, mode="r:") as outer:
        for member in outer:
            assert member.isreg(), member.name
            order.append(member.name)
            wnid = member.name.removesuffix(".tar")
            with tarfile.open(fileobj=outer.extractfile(member), mode="r:") as inner:
                names = []
                for image in inner:
                    assert image.isreg() and "/" not in image.name, image.name
                    names.append(image.name)
                    picture = Image.open(io.BytesIO(inner.extractfile(image).read()))
                    picture.load()  # a truncated or invalid image fails here
                    images[image.name] = (picture.format, picture.mode, picture.size)
                members[wnid] = names
    return {"order": order, "members": members, "images": images}


@pytest.fixture(scope="module")
def validation(release_dir: Path) -> dict:
    """Member order and (format, mode, size) of every validation image."""
    order: list[str] = []
    images: dict[str, tuple[str, str, tuple[int, int]]] = {}
    with tarfile.open(release_dir / release.IMG_VAL.name, mode="r:") as tar:
        for member in tar:
            assert member.isreg(), member.name
            order.append(member.name)
            picture = Image.open(io.BytesIO(tar.extractfile(member).read()))
            picture.load()
            images[member.name] = (picture.format, picture.mode, picture.size)
    return {"order": order, "images": images}


@pytest.fixture(scope="module")
def devkit(release_dir: Path) -> dict:
    with tarfile.open(release_dir / release.DEVKIT.name, mode="r:gz") as tar:
        names = tar.getnames()
        meta = tar.extractfile(release.DEVKIT_META_MAT).read()
        truth = tar.extractfile(release.DEVKIT_VALIDATION_GROUND_TRUTH).read().decode("ascii")
    synsets = scipy.io.loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    return {"names": names, "synsets": synsets, "ground_truth": [int(line) for line in truth.splitlines()]}


def _parse_xmls(path: Path) -> tuple[list[str], dict[str, ET._Element]]:
    members: list[str] = []
    parsed: dict[str, ET._Element] = {}
    with tarfile.open(path, mode="r|gz") as tar:  # streamed: one pass, no seeking in gzip
        for member in tar:
            members.append(member.name)
            if member.isreg():
                parsed[member.name] = ET.fromstring(tar.extractfile(member).read())
    return members, parsed


@pytest.fixture(scope="module")
def train_xml(release_dir: Path) -> tuple[list[str], dict[str, ET._Element]]:
    return _parse_xmls(release_dir / release.BBOX_TRAIN.name)


@pytest.fixture(scope="module")
def validation_xml(release_dir: Path) -> tuple[list[str], dict[str, ET._Element]]:
    return _parse_xmls(release_dir / release.BBOX_VAL.name)


def _objects(root: ET._Element) -> list[tuple[str, tuple[str, str, str, str]]]:
    return [
        (obj.findtext("name"), tuple(obj.findtext(f"bndbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax")))
        for obj in root.findall("object")
    ]


def _frame(root: ET._Element) -> tuple[int, int]:
    return int(root.findtext("size/width")), int(root.findtext("size/height"))


# --- Files, checksums, reproducibility of the bytes --------------------------------------------


def test_release_folder_and_md5sums(release_dir: Path, info: dict) -> None:
    names = {p.name for p in release_dir.iterdir()}
    assert names == {a.name for a in release.ARCHIVES} | {release.MD5SUMS, sample.SAMPLE_JSON}
    sums = fileio.read_md5sums(release_dir / release.MD5SUMS)
    assert set(sums) == {a.name for a in release.ARCHIVES}
    for name, digest in sums.items():
        assert fileio.md5_file(release_dir / name) == digest, name
        assert digest != release.ARCHIVES_BY_NAME[name].md5  # never mistaken for the official archive
        assert info["archives"][name] == {"size": (release_dir / name).stat().st_size, "md5": digest}
    assert info["version"] == sample.SAMPLE_VERSION
    assert info["spec"] == {
        "seed": 2012,
        "train_images_per_synset": [2, 6],
        "image_size": [24, 64],
        "jpeg_quality": 75,
    }
    assert sample.is_complete(release_dir, DEFAULT)
    assert not sample.is_complete(release_dir, SMALL)


def test_sample_source_expects_the_md5s_the_sample_wrote(release_dir: Path, info: dict) -> None:
    """The checksum checks of a sample build compare with the MD5SUMS written beside the archives,
    not with the official MD5s (which a stand-in never has)."""
    from ilsvrc_assets import sources

    expected, expected_from = sources.SampleSource(release_dir).expected_md5s(lambda message: None)
    assert expected == {name: entry["md5"] for name, entry in info["archives"].items()}
    assert expected_from == str(release_dir / release.MD5SUMS)


def test_headers_carry_no_time_or_owner(release_dir: Path) -> None:
    for archive in (release.DEVKIT, release.BBOX_TRAIN, release.BBOX_VAL):
        header = (release_dir / archive.name).read_bytes()[:10]
        assert header[:3] == b"\x1f\x8b\x08" and header[3] == 0, archive.name  # gzip, no FNAME flag
        assert header[4:8] == b"\0\0\0\0", f"{archive.name}: gzip header has a time stamp"
    with tarfile.open(release_dir / release.DEVKIT.name) as tar:
        for member in tar:
            assert (member.mtime, member.uid, member.gid, member.uname) == (sample.TAR_MTIME, 0, 0, "")
    with tarfile.open(release_dir / release.IMG_TRAIN.name) as tar:
        first = tar.next()
        assert (first.mtime, first.uid, first.uname) == (sample.TAR_MTIME, 0, "")


# --- Training images ----------------------------------------------------------------------------


def test_train_archive_layout(train: dict, info: dict) -> None:
    order = train["order"]
    assert len(order) == release.NUM_SYNSETS
    assert {name.removesuffix(".tar") for name in order} == set(release.challenge_synsets())
    assert all(name.endswith(".tar") and "/" not in name for name in order)
    assert order != sorted(order), "inner tars must not be in alphabetical order"
    lo, hi = DEFAULT.train_images_per_synset
    consecutive = unsorted = 0
    for wnid, names in train["members"].items():
        numbers = []
        for name in names:
            match = TRAIN_NAME.match(name)
            assert match and match.group(1) == wnid, f"{wnid}.tar holds {name!r}"
            numbers.append(int(match.group(2)))
        assert len(set(numbers)) == len(numbers)
        assert lo <= len(names) <= hi
        consecutive += sorted(numbers) == list(range(min(numbers), min(numbers) + len(numbers)))
        unsorted += names != sorted(names)
    assert consecutive < 0.05 * release.NUM_SYNSETS, "file numbers must not be consecutive"
    assert unsorted > 0.3 * release.NUM_SYNSETS, "members of the inner tars must be in shuffled order"
    assert len(train["images"]) == info["counts"]["train_images"]


def test_train_images_known_bad_files(train: dict, info: dict) -> None:
    images = train["images"]
    (png,) = release.png_train_files()
    assert images[png][0] == "PNG", f"{png} must really be a PNG"
    for name in release.cmyk_train_files():
        assert images[name][:2] == ("JPEG", "CMYK"), f"{name} must be a CMYK JPEG"
    gray = sorted(n for n, (fmt, mode, _) in images.items() if mode == "L")
    assert all(images[n][0] == "JPEG" for n in gray)
    assert 3 <= len(gray) <= 0.02 * len(images)
    rgb = [n for n, (fmt, mode, _) in images.items() if (fmt, mode) == ("JPEG", "RGB")]
    assert len(rgb) == len(images) - len(gray) - 23
    lo, hi = DEFAULT.image_size
    assert all(lo <= w <= hi and lo <= h <= hi for _, _, (w, h) in images.values())
    special = info["special_files"]
    assert special["png"] == [png]
    assert set(special["cmyk"]) == release.cmyk_train_files()
    assert special["train_grayscale"] == gray


# --- Validation images --------------------------------------------------------------------------


def test_validation_archive_layout(validation: dict, info: dict) -> None:
    order = validation["order"]
    expected = [release.validation_filename(i) for i in range(1, release.NUM_VALIDATION_IMAGES + 1)]
    assert len(order) == release.NUM_VALIDATION_IMAGES
    assert sorted(order) == expected
    assert order != expected, "validation members must be in shuffled order"
    labels = release.validation_synsets()
    per_synset = Counter(labels[release.validation_number(name) - 1] for name in order)
    assert set(per_synset) == set(release.challenge_synsets())
    assert set(per_synset.values()) == {release.VALIDATION_IMAGES_PER_SYNSET}
    images = validation["images"]
    assert {fmt for fmt, _, _ in images.values()} == {"JPEG"}
    gray = sorted(n for n, (_, mode, _) in images.items() if mode == "L")
    assert gray == info["special_files"]["validation_grayscale"] and 3 <= len(gray) <= 50
    assert {mode for _, mode, _ in images.values()} == {"RGB", "L"}
    lo, hi = DEFAULT.image_size
    assert all(lo <= w <= hi and lo <= h <= hi for _, _, (w, h) in images.values())


# --- Devkit -------------------------------------------------------------------------------------


def test_devkit_members(devkit: dict) -> None:
    root = "ILSVRC2012_devkit_t12"
    wanted = (
        release.DEVKIT_META_MAT,
        release.DEVKIT_VALIDATION_GROUND_TRUTH,
        f"{root}/readme.txt",
        f"{root}/evaluation/demo_eval.m",
    )
    for name in wanted:
        assert name in devkit["names"]


def test_meta_mat_hierarchy(devkit: dict, train: dict) -> None:
    synsets = devkit["synsets"]
    assert synsets.size == release.NUM_HIERARCHY_NODES
    assert synsets.dtype.names == release.META_MAT_SYNSET_FIELDS
    texts = release.synset_texts()
    nodes = {int(s["ILSVRC2012_ID"]): s for s in synsets}
    assert sorted(nodes) == list(range(1, release.NUM_HIERARCHY_NODES + 1))
    leaves = {i: str(s["WNID"]) for i, s in nodes.items() if int(s["num_children"]) == 0}
    inner = {i: str(s["WNID"]) for i, s in nodes.items() if int(s["num_children"]) > 0}
    assert sorted(leaves) == list(range(1, release.NUM_SYNSETS + 1))
    assert sorted(inner) == list(range(release.NUM_SYNSETS + 1, release.NUM_HIERARCHY_NODES + 1))
    assert set(leaves.values()) == set(release.challenge_synsets())
    by_id = [leaves[i] for i in sorted(leaves)]
    assert by_id != sorted(by_id), "ILSVRC2012_IDs must not follow alphabetical order"
    assert not set(inner.values()) & set(leaves.values()) and set(inner.values()) <= set(texts)
    assert len(set(inner.values())) == len(inner)
    # The children lists form one tree over all nodes.
    parent: dict[int, int] = {}
    for node_id, s in nodes.items():
        kids = [
            int(k) for k in (s["children"].ravel() if hasattr(s["children"], "ravel") else [s["children"]])
        ]
        assert len(kids) == int(s["num_children"]), node_id
        for kid in kids:
            assert kid in nodes and kid not in parent, f"{kid} has two parents"
            parent[kid] = node_id
    roots = set(nodes) - set(parent)
    assert len(roots) == 1
    for node_id in nodes:  # every node reaches the root without a cycle
        seen = set()
        while node_id in parent:
            assert node_id not in seen
            seen.add(node_id)
            node_id = parent[node_id]
        assert node_id in roots
    for node_id, s in nodes.items():
        assert str(s["words"]) == texts[str(s["WNID"])]
        assert str(s["gloss"])
    counts = {wnid: len(names) for wnid, names in train["members"].items()}
    for node_id, wnid in leaves.items():
        assert int(nodes[node_id]["num_train_images"]) == counts[wnid]
        assert int(nodes[node_id]["wordnet_height"]) == 0
    (root,) = roots
    assert int(nodes[root]["num_train_images"]) == sum(counts.values())


def test_ground_truth_matches_validation_labels(devkit: dict) -> None:
    wnid_of = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in devkit["synsets"]}
    truth = devkit["ground_truth"]
    assert len(truth) == release.NUM_VALIDATION_IMAGES
    assert all(1 <= t <= release.NUM_SYNSETS for t in truth)
    assert tuple(wnid_of[t] for t in truth) == release.validation_synsets()
    assert wnid_of[truth[0]] == "n01751748"  # the facts sheet: the first validation image is a sea snake


# --- Bounding boxes -----------------------------------------------------------------------------


def _is_float(value: str) -> bool:
    return not value.lstrip("-").isdigit()


def _kept(folder: str, frame: tuple[int, int], objects: list) -> int:
    """The facts sheet's reference rules, re-derived independently of sample.reference_kept_boxes."""
    kept = 0
    for name, box in objects:
        if release.is_wnid(name) and name != folder:
            continue
        xmin, ymin, xmax, ymax = (float(v) for v in box)
        x = sorted(min(1.0, max(0.0, v / frame[0])) for v in (xmin, xmax))
        y = sorted(min(1.0, max(0.0, v / frame[1])) for v in (ymin, ymax))
        kept += x[1] > x[0] and y[1] > y[0]
    return kept


def test_train_bbox_layout(train_xml, train: dict, info: dict) -> None:
    members, parsed = train_xml
    images = train["images"]
    assert len(parsed) == info["counts"]["train_bbox_files"]
    assert 0.5 * len(images) <= len(parsed) <= 0.7 * len(images)
    directories = [m for m in members if m not in parsed]
    assert all(release.is_wnid(d) for d in directories)
    for member, root in parsed.items():
        folder, _, file = member.partition("/")
        stem = file.removesuffix(".xml")
        assert f"{stem}.JPEG" in images and stem.startswith(f"{folder}_"), member
        assert root.tag == "annotation" and root.findtext("folder") == folder
        assert root.findtext("size/depth") == "3" and root.findtext("segmented") == "0"
    assert sum(len(root.findall("object")) for root in parsed.values()) == info["counts"]["boxes"]
    kept = sum(_kept(m.partition("/")[0], _frame(r), _objects(r)) for m, r in parsed.items())
    assert kept == info["counts"]["train_boxes_kept_by_reference"]


def test_train_bbox_oddities_present(train_xml, train: dict, info: dict) -> None:
    _, parsed = train_xml
    images = train["images"]
    synsets = set(release.challenge_synsets())
    found: dict[str, set[str]] = {o: set() for o in sample.ODDITIES}
    text_labels: set[tuple[str, str]] = set()
    for member, root in parsed.items():
        folder = member.partition("/")[0]
        stem = member.partition("/")[2].removesuffix(".xml")
        real = images[f"{stem}.JPEG"][2]
        frame = _frame(root)
        objects = _objects(root)
        if frame != real:
            found["frame_differs"].add(member)
            assert frame == (2 * real[0], 2 * real[1])
        if root.findtext("filename") != stem:
            assert root.findtext("filename") == "%s"
            found["junk_filename"].add(member)
        if not objects:
            found["no_objects"].add(member)
        if len(objects) >= 2:
            found["several_objects"].add(member)
        if images[f"{stem}.JPEG"][0] == "PNG":
            found["png_image"].add(member)
        if images[f"{stem}.JPEG"][1] == "CMYK":
            found["cmyk_image"].add(member)
        for name, box in objects:
            if name != folder:
                if release.is_wnid(name):
                    assert name in synsets
                    found["other_synset_object"].add(member)
                else:
                    found["text_label"].add(member)
                    text_labels.add((folder, name))
            if any(_is_float(v) for v in box):
                found["float_coordinates"].add(member)
            xmin, ymin, xmax, ymax = (float(v) for v in box)
            if xmin > xmax or ymin > ymax:
                found["reversed_min_max"].add(member)
            if xmin == xmax or ymin == ymax:
                found["zero_area"].add(member)
            lo_x, hi_x = sorted((xmin, xmax))
            lo_y, hi_y = sorted((ymin, ymax))
            if hi_x < 0 or lo_x > frame[0] or hi_y < 0 or lo_y > frame[1]:
                found["entirely_outside"].add(member)
            elif lo_x < 0 or lo_y < 0 or hi_x > frame[0] or hi_y > frame[1]:
                found["partly_outside"].add(member)
    for oddity in sample.ODDITIES:
        need = 1 if oddity == "png_image" else 3
        assert len(found[oddity]) >= need, f"{oddity}: only {sorted(found[oddity])}"
        # SAMPLE.json tells the truth about where each oddity is.
        assert set(info["oddities"][oddity]) <= found[oddity], oddity
    assert ("n02092002", "Scottish_deerhound") in text_labels
    assert len({folder for folder, _ in text_labels}) >= 3
    # Outside the listed oddities, boxes are integer pixels inside the real image.
    irregular = ("float_coordinates", "reversed_min_max", "zero_area", "partly_outside", "entirely_outside")
    odd = set().union(*(found[o] for o in irregular))
    for member, root in parsed.items():
        if member in odd:
            continue
        w, h = _frame(root)
        for _, box in _objects(root):
            xmin, ymin, xmax, ymax = (int(v) for v in box)
            assert 0 <= xmin < xmax <= w and 0 <= ymin < ymax <= h, member


def test_validation_bbox(validation_xml, validation: dict, info: dict) -> None:
    members, parsed = validation_xml
    assert set(members) - set(parsed) == {"val"}
    assert len(parsed) == release.NUM_VALIDATION_IMAGES
    labels = release.validation_synsets()
    images = validation["images"]
    boxes = 0
    for number in range(1, release.NUM_VALIDATION_IMAGES + 1):
        stem = release.validation_filename(number).removesuffix(".JPEG")
        root = parsed[f"val/{stem}.xml"]
        assert root.findtext("folder") == "val" and root.findtext("filename") == stem
        w, h = _frame(root)
        assert (w, h) == images[f"{stem}.JPEG"][2]
        objects = _objects(root)
        assert 1 <= len(objects) <= 3
        boxes += len(objects)
        for name, box in objects:
            assert name == labels[number - 1]
            xmin, ymin, xmax, ymax = (int(v) for v in box)
            assert 0 <= xmin < xmax <= w and 0 <= ymin < ymax <= h
    assert boxes == info["counts"]["validation_boxes"]


# --- Caching: ensure_sample ---------------------------------------------------------------------


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    messages: list[str] = []
    cache = sample.ensure_sample(tmp_path_factory.mktemp("cache") / "sample", SMALL, progress=messages.append)
    assert any("generating" in m for m in messages)
    return cache


def test_ensure_sample_reuses_complete_cache(small_cache: Path) -> None:
    before = _stamps(small_cache)
    messages: list[str] = []
    assert sample.ensure_sample(small_cache, SMALL, progress=messages.append) == small_cache
    assert _stamps(small_cache) == before
    assert any("using the cached sample" in m for m in messages)
    assert sample.describe(small_cache)["counts"]["train_images"] == release.NUM_SYNSETS  # (1, 1) per synset
    assert [p.name for p in small_cache.parent.iterdir()] == [small_cache.name]  # no temp folders left


def test_ensure_sample_regenerates_identically_when_an_archive_is_missing(small_cache: Path) -> None:
    sums_before = (small_cache / release.MD5SUMS).read_text()
    before = _stamps(small_cache)
    (small_cache / release.BBOX_TRAIN.name).unlink()
    assert not sample.is_complete(small_cache, SMALL)
    # In a fresh interpreter with another hash seed: the bytes must not depend on either.
    code = (
        "import sys; from pathlib import Path; from ilsvrc_assets import sample; "
        "sample.ensure_sample(Path(sys.argv[1]), sample.SampleSpec(seed=7, train_images_per_synset=(1, 1), "
        "image_size=(8, 16), jpeg_quality=50))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    subprocess.run(
        [sys.executable, "-c", code, str(small_cache)], check=True, env=env, cwd=Path(__file__).parents[1]
    )
    assert sample.is_complete(small_cache, SMALL)
    assert (small_cache / release.MD5SUMS).read_text() == sums_before, (
        "same spec must give byte-identical archives"
    )
    after = _stamps(small_cache)
    assert set(after) == set(before)
    assert all(after[name] != before.get(name) for name in after), "the whole folder is replaced, not patched"
    assert [p.name for p in small_cache.parent.iterdir()] == [small_cache.name]
    for name, digest in fileio.read_md5sums(small_cache / release.MD5SUMS).items():
        assert fileio.md5_file(small_cache / name) == digest


def test_ensure_sample_loser_of_a_race_cleans_up(small_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process installed the sample while this one generated: keep the winner's, drop ours."""
    before = _stamps(small_cache)
    real_is_complete = sample.is_complete
    calls: list[Path] = []

    def is_complete(dest: Path, spec: SampleSpec = DEFAULT) -> bool:
        calls.append(dest)
        # The first check runs before the other process has finished; later ones see its sample.
        return len(calls) > 1 and real_is_complete(dest, spec)

    monkeypatch.setattr(sample, "is_complete", is_complete)
    generated: list[Path] = []

    def fake_write_release(dest: Path, spec: SampleSpec, progress=None) -> dict[str, str]:
        dest.mkdir()
        (dest / "partial").write_text("our own copy")
        generated.append(dest)
        return {}

    monkeypatch.setattr(sample, "write_release", fake_write_release)
    assert sample.ensure_sample(small_cache, SMALL) == small_cache
    assert generated and not generated[0].exists(), "the loser's temporary folder must be removed"
    assert _stamps(small_cache) == before
    assert [p.name for p in small_cache.parent.iterdir()] == [small_cache.name]


def test_ensure_sample_refuses_a_folder_with_other_files(tmp_path: Path) -> None:
    folder = tmp_path / "not_a_sample"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(sample.SampleError, match="notes.txt"):
        sample.ensure_sample(folder, SMALL)
    assert (folder / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["not_a_sample"]


def test_spec_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        sample.write_release(tmp_path, SampleSpec(image_size=(4, 8)))
    with pytest.raises(ValueError, match="train_images_per_synset"):
        sample.write_release(tmp_path, SampleSpec(train_images_per_synset=(3, 2)))
    # 1,000 synsets of 6 to 12 images: 5 at each bound, the other 990 between (7 to 11 each).
    with pytest.raises(ValueError, match=r"train_images_total=11001: need 7020 to 10980"):
        sample.write_release(tmp_path, SampleSpec(train_images_per_synset=(6, 12), train_images_total=11_001))
    with pytest.raises(ValueError, match="train_fraction"):
        sample.write_release(tmp_path, SampleSpec(train_fraction=0))
    with pytest.raises(ValueError, match="train_bbox_files=5000: more than the 4000 training images"):
        sample.write_release(tmp_path, SampleSpec(train_images_per_synset=(4, 4), train_bbox_files=5_000))
    assert list(tmp_path.iterdir()) == []


def test_opt_in_fields_at_their_defaults_leave_sample_json_as_before() -> None:
    # SAMPLE.json's spec is what is_complete compares: a default spec's must not gain keys.
    assert set(DEFAULT.as_json()) == {"seed", "train_images_per_synset", "image_size", "jpeg_quality"}
    half = sample.full_count_spec(0.5).as_json()
    assert half["train_images_total"] == release.NUM_TRAIN_IMAGES and half["train_fraction"] == 0.5
    assert half["train_bbox_files"] == 272_273  # half of the release's 544,546


def test_full_count_spec_has_the_release_counts() -> None:
    """The counts of the full-count stand-in, from its plan's per-synset counts (no image made)."""
    from ilsvrc_assets.sample.plan import _exact_train_counts

    spec = sample.full_count_spec()
    assert spec.train_bbox_files == release.NUM_TRAIN_BBOX_FILES == sample.FULL_SCALE_TRAIN_BBOX_FILES
    synsets = release.challenge_synsets()
    counts = _exact_train_counts(spec, synsets)
    assert list(counts) == list(synsets)
    assert sum(counts.values()) == release.NUM_TRAIN_IMAGES == 1_281_167
    assert min(counts.values()) == 732 and max(counts.values()) == 1300
    assert Counter(counts.values())[732] == Counter(counts.values())[1300] == 5  # a handful at each bound
    assert _exact_train_counts(spec, synsets) == counts  # deterministic
    # Half of each synset's images, rounded up.
    half = sample.full_count_spec(0.5)
    assert sum(-(-n // 2) for n in _exact_train_counts(half, synsets).values()) == 640_844


def test_a_total_is_met_exactly_and_a_fraction_keeps_a_subset_of_the_same_files() -> None:
    """The full-count machinery on a release of 9,000 images (the same code path, in a second)."""
    from ilsvrc_assets.sample.plan import _plan_train, _plan_train_boxes

    spec = SampleSpec(
        seed=3, train_images_per_synset=(6, 12), train_images_total=9_000, train_bbox_files=4_000
    )
    half = dataclasses.replace(spec, train_fraction=0.5, train_bbox_files=2_000)
    order, train = _plan_train(spec)
    half_order, half_train = _plan_train(half)
    sizes = Counter(len(images) for images in train.values())
    assert sum(len(images) for images in train.values()) == 9_000
    assert min(sizes) == 6 and max(sizes) == 12 and sizes[6] == sizes[12] == 5
    assert half_order == order
    bad = release.png_train_files() | release.cmyk_train_files()
    for wnid, images in train.items():
        names = [image.filename for image in images]
        kept = [image.filename for image in half_train[wnid]]
        assert len(kept) == -(-len(names) // 2), wnid
        assert kept == [name for name in names if name in set(kept)], "a subset, in the same member order"
        assert bad & set(names) <= set(kept), "the PNG and CMYK files stay"
        full_images = {image.filename: image for image in images}
        assert all(full_images[image.filename] == image for image in half_train[wnid]), "the same pictures"
    for plan_spec, (synset_order, images), files in (
        (spec, (order, train), 4_000),
        (half, (half_order, half_train), 2_000),
    ):
        annotations, _ = _plan_train_boxes(plan_spec, synset_order, images)
        assert len(annotations) == files
        names = {image.filename for group in images.values() for image in group}
        assert {f"{a.stem}.JPEG" for a in annotations} <= names


def test_images_encoded_on_several_cores_are_the_bytes_of_one() -> None:
    """The processes that encode the images in parallel change no byte, nor the order."""
    from ilsvrc_assets.sample.plan import _plan
    from ilsvrc_assets.sample.render import encoded_batches

    spec = SampleSpec(seed=11, image_size=(8, 24), photo_train_size=(16, 32))
    plan = _plan(spec)
    train_images = [image for wnid in plan.synset_order for image in plan.train[wnid]]
    # Every kind of image (PNG, CMYK, grayscale, RGB), in more batches than are in flight at once.
    chosen = [i for i in train_images + plan.validation if i.kind != "rgb"] + plan.validation[:300]
    batches = [chosen[i : i + 37] for i in range(0, len(chosen), 37)]
    kinds = Counter(image.kind for image in chosen)
    for train in (False, True):
        one = list(encoded_batches(spec, batches, train, processes=1))
        assert list(encoded_batches(spec, batches, train, processes=2)) == one
        assert [len(b) for b in one] == [len(b) for b in batches]
    assert set(kinds) == {"rgb", "gray", "png", "cmyk"}, kinds


def test_describe_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        sample.describe(tmp_path)


def test_reference_kept_boxes_rules() -> None:
    frame = (100, 50)
    assert sample.reference_kept_boxes("n01440764", frame, [("n01440764", ("10", "5", "20", "15"))]) == 1
    assert (
        sample.reference_kept_boxes("n01440764", frame, [("n01440764", ("20", "15", "10", "5"))]) == 1
    )  # swapped
    assert (
        sample.reference_kept_boxes("n01440764", frame, [("n01440764", ("10", "5", "10", "15"))]) == 0
    )  # zero width
    assert (
        sample.reference_kept_boxes("n01440764", frame, [("n01440764", ("103", "5", "120", "15"))]) == 0
    )  # outside
    assert (
        sample.reference_kept_boxes("n01440764", frame, [("n01443537", ("10", "5", "20", "15"))]) == 0
    )  # other WNID
    assert (
        sample.reference_kept_boxes("n01440764", frame, [("tench", ("-3.5", "5", "200", "15"))]) == 1
    )  # text, clamped
