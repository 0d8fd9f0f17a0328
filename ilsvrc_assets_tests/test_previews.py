"""The previews of the indexes, the box table and the validation tree, drawn from the built-in
sample: their content against the data, their determinism and their size."""

from __future__ import annotations

import base64
import io
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ilsvrc_assets import (
    archives,
    bounding_boxes,
    contact_sheets,
    previews,
    release,
    synsets,
    validation_tree,
)
from ilsvrc_assets.sources.official import ArchiveReader

METADATA_LIMIT = 1_000_000  # a materialisation's metadata, all entries together


class Built:
    """The library outputs of the sample that the previews read, made once for this module."""

    def __init__(self, release_dir: Path, out: Path):
        self.release_dir = release_dir
        self.train_archive = release_dir / release.IMG_TRAIN.name
        self.validation_archive = release_dir / release.IMG_VAL.name
        devkit = synsets.read_devkit(release_dir / release.DEVKIT.name)
        self.synset_table = synsets.synset_table(devkit)
        labels = synsets.validation_labels(devkit, self.synset_table)
        self.train_index = archives.index_train_archive(
            self.train_archive, frozenset(self.synset_table["wnid"])
        )
        self.validation_index = archives.index_validation_archive(self.validation_archive, labels)
        self.boxes = bounding_boxes.build_table(
            release_dir / release.BBOX_TRAIN.name,
            release_dir / release.BBOX_VAL.name,
            set(self.synset_table["wnid"]),
            labels,
            workers=1,
        )
        # A tree of 25 classes (1,250 images) stands in for the whole one: same layout.
        first = sorted(self.synset_table["wnid"])[:25]
        self.tree = out / "validation"
        validation_tree.build(
            ArchiveReader(self.validation_archive),
            self.validation_index[self.validation_index["synset"].isin(first)],
            self.tree,
        )


@pytest.fixture(scope="module")
def built(sample_release: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(sample_release, tmp_path_factory.mktemp("previews"))


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_class_bars_are_the_images_per_synset_in_the_archive(built: Built):
    # Independently of the index: count the members of each inner tar of the train archive.
    expected = Counter()
    with tarfile.open(built.train_archive) as outer:
        for member in outer:
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                expected[member.name.removesuffix(".tar")] = sum(1 for m in inner if m.isfile())
    counts = previews.class_counts(built.train_index, list(built.synset_table["wnid"]))
    with previews.new_figure(9, 2.6) as (_, ax):
        previews.draw_class_counts(ax, counts, "train")
        heights = ax.patches[0].get_data().values  # the one step artist holding every bar
    assert len(heights) == release.NUM_SYNSETS
    assert list(heights) == sorted(expected.values(), reverse=True)
    assert dict(zip(counts.index, heights)) == dict(expected)
    picture = previews.images_per_class(built.train_index, "train", list(built.synset_table["wnid"]))
    low, high = min(expected.values()), max(expected.values())
    assert f"from {low:,} to {high:,} images" in picture.caption


def test_smallest_classes_are_the_ten_with_fewest_images(built: Built):
    table = previews.smallest_classes(built.train_index, built.synset_table).table
    per_synset = built.train_index.groupby("synset").size()
    assert len(table) == 10
    assert list(table["images"]) == sorted(per_synset)[:10]
    assert all(per_synset[w] == n for w, n in zip(table["wnid"], table["images"]))


def test_kept_boxes_are_drawn_where_the_table_says(built: Built):
    picture, sheet = previews.box_contact_sheet(
        built.boxes,
        {
            "train": (built.train_index, ArchiveReader(built.train_archive)),
            "validation": (built.validation_index, ArchiveReader(built.validation_archive)),
        },
    )
    pixels = _pixels(picture.png)
    names = [
        *previews.sample_box_images(
            built.boxes, "train", previews.SHEET_IMAGES["train"], previews.SHEET_DROPPED
        ),
        *previews.sample_box_images(built.boxes, "validation", previews.SHEET_IMAGES["validation"]),
    ]
    assert len(sheet.placements) == len(names) == 12
    # The sample shows images with dropped boxes (the sample release has some of each reason).
    dropped_images = set(built.boxes.loc[~built.boxes["kept"], "image"])
    assert 1 <= len(dropped_images & set(names)) <= previews.SHEET_DROPPED

    def colour_near(x: float, y: float, colour: tuple[int, int, int]) -> bool:
        x, y = round(x), round(y)
        window = pixels[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
        return bool((window == colour).all(axis=-1).any())

    checked = 0
    for name, place in zip(names, sheet.placements):
        boxes = built.boxes[built.boxes["image"] == name]
        if len(boxes) != 1:  # other boxes could cross this one's edges
            continue
        box = boxes.iloc[0]
        colour = contact_sheets.KEPT_COLOUR if box["kept"] else contact_sheets.DROPPED_COLOUR
        x0, x1 = place.left + box["xmin"] * place.width, place.left + box["xmax"] * place.width
        y0, y1 = place.top + box["ymin"] * place.height, place.top + box["ymax"] * place.height
        if box["kept"]:
            for x, y in (((x0 + x1) / 2, y0), ((x0 + x1) / 2, y1), (x0, (y0 + y1) / 2), (x1, (y0 + y1) / 2)):
                assert colour_near(x, y, colour), f"{name}: no box edge at ({x:.0f}, {y:.0f})"
            # and nowhere well inside the box
            inside = pixels[round(y0) + 3 : round(y1) - 2, round(x0) + 3 : round(x1) - 2]
            assert not (inside == colour).all(axis=-1).any()
        else:
            assert colour_near(x0, y0, colour), f"{name}: no dashed corner at ({x0:.0f}, {y0:.0f})"
        checked += 1
    assert checked >= 3


def _all_previews(built: Built) -> dict[str, list[previews.Preview]]:
    return {
        "train_images": previews.for_image_index(built.train_index, "train", built.synset_table),
        "validation_images": previews.for_image_index(
            built.validation_index, "validation", built.synset_table
        ),
        "bounding_boxes": previews.for_bounding_boxes(
            built.boxes,
            built.train_index,
            ArchiveReader(built.train_archive),
            built.validation_index,
            ArchiveReader(built.validation_archive),
        ),
        "validation_tree": previews.for_validation_tree(built.tree, built.synset_table),
    }


def test_previews_are_deterministic_and_small(built: Built, tmp_path: Path):
    first, second = _all_previews(built), _all_previews(built)
    for asset, made in first.items():
        again = second[asset]
        assert [p.name for p in made] == [p.name for p in again]
        for a, b in zip(made, again):
            if isinstance(a, previews.Picture):
                assert a.png == b.png, f"{asset}/{a.name} differs between two calls"
                assert a.png.startswith(b"\x89PNG") and len(a.png) < 250_000, f"{asset}/{a.name}"
            else:
                assert a.table.equals(b.table)
        # The metadata of a materialisation stays under 1 MB: base64 pictures plus the tables.
        size = sum(
            len(base64.b64encode(p.png)) if isinstance(p, previews.Picture) else len(p.table.to_json())
            for p in made
        )
        assert size < METADATA_LIMIT, f"{asset}: {size:,} bytes of metadata"
        paths = previews.write_all(made, previews.folder_for(tmp_path, asset))
        assert [p.name for p in paths] == [
            f"{p.name}.png" if isinstance(p, previews.Picture) else f"{p.name}.csv" for p in made
        ]
        assert all(
            path.read_bytes() == p.png for path, p in zip(paths, made) if isinstance(p, previews.Picture)
        )


def test_validation_tree_sample_is_one_image_per_folder(built: Built):
    picture = previews.for_validation_tree(built.tree, built.synset_table)[0]
    assert picture.caption.startswith(f"the first image of {previews.TREE_CLASSES} of the 25 class folders")


def test_box_counts_add_up_to_the_table(built: Built):
    counts = previews.box_counts(built.boxes).table
    assert counts["boxes"].sum() == len(built.boxes)
    dropped = counts[counts["outcome"] != "kept"]
    expected = built.boxes.loc[~built.boxes["kept"], "drop_reason"].value_counts()
    assert dict(zip(dropped["outcome"], dropped["boxes"])) == dict(expected)
