"""The training ImageFolder tree (``train_tree``) from the built sample: every image once in its
synset's folder with the archive member's bytes; a killed run is continued by the next, leaving no
temporary file; the check names a missing file, a stray file, a missing folder; and the tree (with
the validation tree) reads as torchvision's ImageFolder reads it: by a faithful copy of its rules
always, and by torchvision itself where it is installed (it is not in the test extra: too heavy).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ilsvrc_assets import archives, fileio, images, release, synsets, train_tree, versions
from ilsvrc_assets.sources import from_settings
from ilsvrc_assets_tests.helpers import differing, final_files, kill_when, make_settings, temp_files

pytestmark = pytest.mark.long(seconds=100)  # conftest: the long files start first

# torchvision.datasets.folder (0.29): the extensions ImageFolder accepts, matched case-insensitively
# on the end of the whole path.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def imagefolder_samples(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, samples) as ``torchvision.datasets.ImageFolder(root)`` finds them (0.29's
    ``find_classes`` and ``make_dataset``): classes are the sorted names of the folders in ``root``
    (numbered 0.. in that order), samples each class's files, walked with symbolic links followed,
    in sorted order, kept when the path ends in an image extension; a class without one is an error.
    """
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"Couldn't find any class folder in {root}.")
    samples = []
    for index, name in enumerate(classes):
        found = [
            (os.path.join(walked, fname), index)
            for walked, _, fnames in sorted(os.walk(os.path.join(root, name), followlinks=True))
            for fname in sorted(fnames)
            if os.path.join(walked, fname).lower().endswith(IMG_EXTENSIONS)
        ]
        if not found:
            raise FileNotFoundError(f"Found no valid file for the classes {name}.")
        samples += found
    return classes, samples


@pytest.fixture(scope="module")
def built(built_sample_graph, tmp_path_factory):
    """(settings, the built graph's settings, what ``make_train_tree`` returned): the training tree
    made from the built sample's synsets and training index, in a data folder of its own."""
    reference = built_sample_graph[0]
    settings = make_settings(
        tmp_path_factory.mktemp("train-tree") / "data", None, source="sample", sample_dir=reference.sample_dir
    )
    settings.index_dir.mkdir(parents=True)
    shutil.copyfile(reference.synsets_csv, settings.synsets_csv)
    shutil.copyfile(reference.image_index("train"), settings.image_index("train"))
    made = train_tree.make_train_tree(settings, from_settings(settings))
    versions.make_published(settings, "train_tree")  # what readers see: <data>/train
    return settings, reference, made


def test_every_training_image_is_once_in_its_synset_folder_with_the_archive_bytes(built):
    settings, _, made = built
    index = archives.read_index(settings.image_index("train"))
    on_disk = final_files(settings.train_dir)
    assert sorted(on_disk) == sorted(f"{s}/{f}" for s, f in zip(index["synset"], index["filename"]))
    assert made.facts["written"] == made.facts["images"] == len(index) and made.facts["already_in_place"] == 0
    reader = from_settings(settings).image_reader("train", print)
    with reader.open() as reading:
        for name, synset, offset, size in zip(
            index["filename"], index["synset"], index["offset"], index["size"]
        ):
            assert on_disk[f"{synset}/{name}"].read_bytes() == reading.read(name, offset, size), name
    # The PNG and the CMYK JPEGs keep the archive's bytes (ImageFolder's PIL loader reads them).
    kinds = {name: images.probe(path.read_bytes(), name) for name, path in on_disk.items()}
    png = [n for n, info in kinds.items() if info.format == "PNG"]
    cmyk = [n for n, info in kinds.items() if info.format == "JPEG" and info.components == 4]
    assert {n.split("/")[1] for n in png} == set(release.png_train_files())
    assert {n.split("/")[1] for n in cmyk} <= set(release.cmyk_train_files()) and cmyk
    verdict = train_tree.train_tree_verdict(settings)
    assert verdict.passed, verdict.description
    assert verdict.facts == {"images": len(index), "folders": 1000, "expected_images": len(index)}
    assert (settings.data_dir / "previews" / "train_tree" / "train_classes.png").is_file()


def test_imagefolder_rules_number_both_trees_in_sorted_wnid_order(built):
    settings, reference, _ = built
    table = synsets.read_synsets(settings.synsets_csv)
    label = dict(zip(table["wnid"], table["label"]))  # the TFRecords' 1-based label
    index = archives.read_index(settings.image_index("train"))
    classes, samples = imagefolder_samples(settings.train_dir)
    assert classes == sorted(table["wnid"]) and len(classes) == 1000
    assert all(label[wnid] == number + 1 for number, wnid in enumerate(classes))
    found = {os.path.basename(path): classes[target] for path, target in samples}
    assert len(samples) == len(found) == len(index)
    assert found == dict(zip(index["filename"], index["synset"]))

    classes, samples = imagefolder_samples(reference.validation_dir)
    assert classes == sorted(table["wnid"])
    truth = release.validation_synsets()
    assert len(samples) == release.NUM_VALIDATION_IMAGES
    assert all(classes[t] == truth[release.validation_number(os.path.basename(p)) - 1] for p, t in samples)
    # The name of a file being written is no image to ImageFolder: a run in progress adds no sample.
    assert not str(fileio.temp_path_for(Path("n01440764_10026.JPEG"))).lower().endswith(IMG_EXTENSIONS)


def test_torchvision_imagefolder_reads_both_trees(built):
    datasets = pytest.importorskip(
        "torchvision.datasets",
        reason="torchvision is not installed (too heavy for the test extra); "
        "test_imagefolder_rules_number_both_trees_in_sorted_wnid_order checks its rules",
    )
    settings, reference, _ = built
    for root in (settings.train_dir, reference.validation_dir):
        dataset = datasets.ImageFolder(str(root))
        classes, samples = imagefolder_samples(root)
        assert dataset.classes == classes and dataset.samples == samples
    # The PNG and the CMYK JPEGs load as RGB pictures, with the label of their folder.
    dataset = datasets.ImageFolder(str(settings.train_dir))
    odd = set(release.png_train_files()) | set(release.cmyk_train_files())
    loaded = set()
    for number, (path, target) in enumerate(dataset.samples):
        if os.path.basename(path) in odd:
            picture, label = dataset[number]
            assert isinstance(picture, Image.Image) and picture.mode == "RGB" and label == target
            loaded.add(os.path.basename(path))
    assert set(release.png_train_files()) <= loaded and len(loaded) > 1


def test_the_readme_torchvision_example_runs(built, tmp_path, monkeypatch):
    pytest.importorskip("torchvision", reason="torchvision is not installed (too heavy for the test extra)")
    settings, reference, _ = built
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = next(b.split("```")[0] for b in readme.split("```python\n")[1:] if "datasets.ImageFolder" in b)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train").symlink_to(settings.train_dir)
    (tmp_path / "data" / "validation").symlink_to(reference.validation_dir)
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(compile(example, "README.md", "exec"), names)  # noqa: S102 - the README's own example
    assert len(names["train"]) == len(archives.read_index(settings.image_index("train")))
    assert len(names["val"]) == release.NUM_VALIDATION_IMAGES
    assert tuple(names["images"].shape) == (256, 3, 224, 224) and 0 <= int(names["labels"].min())
    assert int(names["labels"].max()) < 1000


def _files_in(tree: Path) -> int:
    """Files (images and temporary files) in the synset folders of the tree so far."""
    if not tree.is_dir():
        return 0
    return sum(len(os.listdir(folder)) for folder in tree.iterdir() if folder.is_dir())


def test_killed_run_is_continued_by_the_next_leaving_no_temporary_file(built, tmp_path):
    done, _, _ = built
    settings = make_settings(tmp_path / "data", None, source="sample", sample_dir=done.sample_dir, workers=1)
    settings.index_dir.mkdir(parents=True)
    shutil.copyfile(done.synsets_csv, settings.synsets_csv)
    shutil.copyfile(done.image_index("train"), settings.image_index("train"))
    tree = versions.working(settings, "train")  # the unpublished version the killed run writes
    env = {
        **os.environ,
        "ILSVRC_SOURCE": "sample",
        "ILSVRC_SAMPLE_DIR": str(settings.sample_dir),
        "ILSVRC_DATA_DIR": str(settings.data_dir),
        "ILSVRC_WORKERS": "1",
    }
    code = (
        "from ilsvrc_assets import settings, sources, train_tree\n"
        "s = settings.load()\n"
        "train_tree.make_train_tree(s, sources.from_settings(s))\n"
    )
    log = tmp_path / "killed.log"
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    kill_when(process, lambda: _files_in(tree) >= 500, timeout=120, log=log)
    written = final_files(tree)
    assert 0 < len(written) < len(final_files(done.train_dir)), "the kill did not land inside the tree"
    assert differing(tree, done.train_dir, sorted(written)) == []  # whatever has its name is whole

    # What else an interrupted or meddled-with run may leave: a dead writer's temporary file, a file
    # of the wrong size under an image's name, a stray file, a stray folder, an image in a sub-folder.
    left_by_the_kill = len(temp_files(tree))  # 0 or 1: the image being written
    first, second = sorted(written)[:2]
    (tree / first).with_name(f".{Path(first).name}{fileio.TEMP_MARKER}{process.pid}-0badf00d").write_bytes(
        b"x"
    )
    (tree / second).write_bytes((tree / second).read_bytes()[:100])
    (tree / first).with_name("notes.txt").write_text("stray")
    (tree / "n00000000").mkdir()
    (tree / first).parent.joinpath("nested").mkdir()
    shutil.copyfile(tree / first, (tree / first).parent / "nested" / Path(first).name)

    made = train_tree.make_train_tree(settings, from_settings(settings))
    assert made.facts["already_in_place"] == len(written) - 1  # all but the cut one
    assert made.facts["written"] == made.facts["images"] - made.facts["already_in_place"]
    # The temporary files, notes.txt and nested/<image> (n00000000 was empty).
    assert made.facts["removed_misplaced"] == left_by_the_kill + 3
    assert temp_files(settings.data_dir) == []
    assert sorted(final_files(tree)) == sorted(final_files(done.train_dir))
    assert differing(tree, done.train_dir) == []
    assert train_tree.train_tree_verdict(settings).passed  # judged on the version written
    assert not settings.train_dir.exists()  # not published: readers see nothing yet


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("missing file", ["wrong image count: {synset}: ", "missing: {synset}/{name}"]),
        ("stray file", ["stray: {synset}/notes.txt"]),
        ("image in a sub-folder", ["stray: {synset}/nested/"]),
        ("wrong size", ["wrong size: {synset}/{name} (10 bytes, indexed "]),
        ("missing folder", ["999 class folders, expected 1,000", "missing: {synset}/ ("]),
        ("stray folder", ["1,001 class folders, expected 1,000", "stray: n00000000/"]),
    ],
)
def test_check_names_what_is_wrong(built, damage, expected, tmp_path):
    settings, _, _ = built
    tree = settings.train_dir
    synset = sorted(os.listdir(tree))[10]
    name = min(os.listdir(tree / synset))
    image = tree / synset / name
    kept = tmp_path / "kept"
    shutil.copytree(tree / synset, kept)
    try:
        if damage == "missing file":
            image.unlink()
        elif damage == "stray file":
            (tree / synset / "notes.txt").write_text("stray")
        elif damage == "image in a sub-folder":
            (tree / synset / "nested").mkdir()
            shutil.copyfile(image, tree / synset / "nested" / name)
        elif damage == "wrong size":
            image.write_bytes(image.read_bytes()[:10])
        elif damage == "missing folder":
            shutil.rmtree(tree / synset)
        elif damage == "stray folder":
            (tree / "n00000000").mkdir()
            shutil.copyfile(image, tree / "n00000000" / name)
        verdict = train_tree.train_tree_verdict(settings)
        assert not verdict.passed
        for text in expected:
            assert text.format(synset=synset, name=name) in verdict.description, verdict.description
    finally:
        shutil.rmtree(tree / "n00000000", ignore_errors=True)
        shutil.rmtree(tree / synset, ignore_errors=True)
        shutil.copytree(kept, tree / synset)
    assert train_tree.train_tree_verdict(settings).passed
