"""The plan of the sample: every file name, image size and kind, and bounding box, decided before any
byte is written.

Each part (train images, validation images, training boxes, devkit IDs) draws from its own seeded
random stream, so the same :class:`~ilsvrc_assets.sample.spec.SampleSpec` always gives the same plan.
The training boxes carry the release's oddities (:data:`ODDITIES`); :func:`reference_kept_boxes`
counts which of an XML's boxes the reference table keeps. Nothing here writes bytes: that is
:mod:`ilsvrc_assets.sample.render` (pictures, XML, meta.mat) and :mod:`ilsvrc_assets.sample.tars`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from ilsvrc_assets import release
from ilsvrc_assets.sample.spec import SYNSETS_AT_EACH_BOUND, SampleSpec

TRAIN_NUMBER_RANGE = (1, 60_000)  # file numbers n of <wnid>_<n>.JPEG are drawn from here
TRAIN_ANNOTATED_FRACTION = 0.6  # share of training images with a bounding-box XML
TRAIN_GRAYSCALE_FRACTION = 0.01
MIN_TRAIN_GRAYSCALE = 3
VALIDATION_GRAYSCALE = 10
ODDITY_REPEATS = 3  # each kind of bounding-box oddity appears this many times (space permitting)

# Dog synsets whose XML <name> is a breed name instead of the WNID, as in the real annotations.
# Scottish_deerhound is the case the facts sheet names; it appears twice.
TEXT_LABELS: tuple[tuple[str, str, int], ...] = (
    ("n02092002", "Scottish_deerhound", 2),
    ("n02085620", "Chihuahua", 1),
    ("n02099601", "golden_retriever", 1),
    ("n02106662", "German_shepherd", 1),
)

# Kinds of bounding-box oddity; the keys of SAMPLE.json "oddities" (each a list of XML member names).
ODDITIES = (
    "float_coordinates",  # coordinates such as 64.0994
    "partly_outside",  # a box reaching past the image (negative or > size); clamping keeps it
    "entirely_outside",  # a box wholly outside the image; clamping leaves zero width, so it is dropped
    "reversed_min_max",  # xmin > xmax (and on some, ymin > ymax); the reference swaps them
    "zero_area",  # xmin == xmax; dropped
    "no_objects",  # no <object> at all
    "several_objects",  # two or more <object>s
    "text_label",  # <name> is a dog breed name; the box belongs to the folder's synset
    "other_synset_object",  # <name> is a different challenge WNID; the reference drops that box
    "junk_filename",  # <filename>%s</filename>
    "frame_differs",  # <size> is twice the real image size, boxes in that frame
    "png_image",  # boxes on the PNG file
    "cmyk_image",  # boxes on CMYK files
)
# The oddities assigned to ordinary annotated images, ODDITY_REPEATS each.
_ASSIGNED_ODDITIES = (
    "float_coordinates",
    "partly_outside",
    "entirely_outside",
    "reversed_min_max",
    "zero_area",
    "no_objects",
    "several_objects",
    "other_synset_object",
    "junk_filename",
    "frame_differs",
)
CMYK_ANNOTATED = 3  # CMYK files that get a bounding-box XML


@dataclass(frozen=True, slots=True)  # slots: a full-count plan holds 1,281,167
class _Image:
    filename: str
    width: int
    height: int
    kind: str  # "rgb", "gray", "cmyk" or "png"
    look: int  # 64 random bits that choose the colours and pattern


@dataclass(frozen=True, slots=True)
class _Object:
    name: str
    box: tuple[str, str, str, str]  # xmin, ymin, xmax, ymax exactly as written


@dataclass(frozen=True, slots=True)
class _Annotation:
    folder: str
    stem: str  # the XML file's stem, = the image's (the reference takes the name from here)
    filename_text: str  # what <filename> says (normally the stem)
    frame: tuple[int, int]  # <size> width, height
    objects: tuple[_Object, ...]

    @property
    def member(self) -> str:
        return f"{self.folder}/{self.stem}.xml"


@dataclass
class _Plan:
    synset_order: list[str]  # inner tar order in the train archive
    train: dict[str, list[_Image]]  # synset -> images in inner-tar member order
    validation: list[_Image]  # index i - 1 is image number i
    validation_order: list[int]  # member order of the validation archive
    validation_boxes: list[tuple[_Object, ...]]
    annotations: list[_Annotation]  # in bbox archive order
    ids: dict[str, int]  # leaf WNID -> ILSVRC2012_ID
    oddities: dict[str, list[str]] = field(default_factory=dict)


def _rng(spec: SampleSpec, part: str) -> random.Random:
    """An independent stream per part, so changing one part's amount leaves the others' bytes alone.

    A str seed is hashed with SHA-512 by random.Random, so it does not depend on PYTHONHASHSEED.
    """
    return random.Random(f"ilsvrc-sample/{spec.seed}/{part}")


def _size(rng: random.Random, spec: SampleSpec, train: bool = False) -> tuple[int, int]:
    lo, hi = spec.photo_train_size if train and spec.photo_train_size else spec.image_size
    return rng.randint(lo, hi), rng.randint(lo, hi)


def _inside(rng: random.Random, width: int, height: int) -> tuple[int, int, int, int]:
    """An integer box with min < max lying inside a width x height image."""
    xmin = rng.randint(0, width // 2 - 1)
    ymin = rng.randint(0, height // 2 - 1)
    return xmin, ymin, rng.randint(xmin + 1, width - 1), rng.randint(ymin + 1, height - 1)


def _box(values: Sequence[int | float]) -> tuple[str, str, str, str]:
    return tuple(f"{v:.4f}" if isinstance(v, float) else str(v) for v in values)  # type: ignore[return-value]


def _plan_train(spec: SampleSpec) -> tuple[list[str], dict[str, list[_Image]]]:
    rng = _rng(spec, "train")
    synsets = release.challenge_synsets()
    special: dict[str, dict[int, str]] = {}  # synset -> {number: kind} of the known bad files
    for kind, names in (("png", release.png_train_files()), ("cmyk", release.cmyk_train_files())):
        for name in sorted(names):
            wnid, _, number = name.removesuffix(".JPEG").rpartition("_")
            special.setdefault(wnid, {})[int(number)] = kind
    lo, hi = spec.train_images_per_synset
    exact = _exact_train_counts(spec, synsets) if spec.train_images_total is not None else None
    train: dict[str, list[_Image]] = {}
    kept: set[str] = set()  # with train_fraction < 1, the images left in the plan at the end
    for wnid in synsets:
        fixed = special.get(wnid, {})
        drawn_count = exact[wnid] if exact is not None else rng.randint(lo, hi)
        count = max(drawn_count, len(fixed))  # the bad files count towards the synset
        pool = range(TRAIN_NUMBER_RANGE[0], TRAIN_NUMBER_RANGE[1] + 1)
        drawn = [n for n in rng.sample(pool, count + len(fixed)) if n not in fixed]
        numbers = list(fixed) + drawn[: count - len(fixed)]
        images = []
        for number in numbers:
            width, height = _size(rng, spec, train=True)
            images.append(
                _Image(f"{wnid}_{number}.JPEG", width, height, fixed.get(number, "rgb"), rng.getrandbits(64))
            )
        rng.shuffle(images)  # tar member order is not sorted in the release either
        train[wnid] = images
        # The first numbers drawn (the bad files among them) are those kept of a fraction.
        kept.update(f"{wnid}_{n}.JPEG" for n in numbers[: math.ceil(count * spec.train_fraction)])
    # About 1% grayscale JPEGs, chosen among the ordinary ones.
    ordinary = [(w, i) for w in synsets for i, image in enumerate(train[w]) if image.kind == "rgb"]
    wanted = max(MIN_TRAIN_GRAYSCALE, round(TRAIN_GRAYSCALE_FRACTION * len(ordinary)))
    for wnid, i in rng.sample(ordinary, min(wanted, len(ordinary))):
        image = train[wnid][i]
        train[wnid][i] = _Image(image.filename, image.width, image.height, "gray", image.look)
    order = list(synsets)
    rng.shuffle(order)
    if spec.train_fraction < 1:  # a subset of the plan at 1.0: the same images, kinds and order
        train = {
            wnid: [image for image in images if image.filename in kept] for wnid, images in train.items()
        }
    return order, train


def _exact_train_counts(spec: SampleSpec, synsets: Sequence[str]) -> dict[str, int]:
    """Per-synset counts within ``train_images_per_synset`` adding up to ``train_images_total``.

    A few synsets (:data:`SYNSETS_AT_EACH_BOUND` each) get exactly the least and the most; the others
    are drawn strictly between, then each moved the same share of its distance to the bound the sum
    has to go towards (the rounding's remainder one image each, to synsets drawn at random).
    """
    rng = _rng(spec, "train_counts")
    lo, hi = spec.train_images_per_synset
    ends = rng.sample(list(synsets), 2 * SYNSETS_AT_EACH_BOUND)
    counts = {wnid: lo for wnid in ends[:SYNSETS_AT_EACH_BOUND]}
    counts.update({wnid: hi for wnid in ends[SYNSETS_AT_EACH_BOUND:]})
    others = [wnid for wnid in synsets if wnid not in counts]
    drawn = {wnid: rng.randint(lo + 1, hi - 1) for wnid in others}
    gap = spec.train_images_total - sum(counts.values()) - sum(drawn.values())
    bound, sign = (hi - 1, 1) if gap > 0 else (lo + 1, -1)
    room = {wnid: abs(bound - drawn[wnid]) for wnid in others}
    total_room = sum(room.values())  # at least |gap|: SampleSpec.validate
    moved = {wnid: room[wnid] * abs(gap) // total_room if gap else 0 for wnid in others}
    remainder = abs(gap) - sum(moved.values())  # fewer than the synsets not yet at the bound
    for wnid in rng.sample([w for w in others if moved[w] < room[w]], remainder):
        moved[wnid] += 1
    counts.update({wnid: drawn[wnid] + sign * moved[wnid] for wnid in others})
    return {wnid: counts[wnid] for wnid in synsets}


def _plan_validation(spec: SampleSpec) -> tuple[list[_Image], list[int], list[tuple[_Object, ...]]]:
    rng = _rng(spec, "validation")
    labels = release.validation_synsets()
    gray = set(rng.sample(range(1, len(labels) + 1), VALIDATION_GRAYSCALE))
    images, boxes = [], []
    for number, wnid in enumerate(labels, start=1):
        width, height = _size(rng, spec)
        kind = "gray" if number in gray else "rgb"
        images.append(_Image(release.validation_filename(number), width, height, kind, rng.getrandbits(64)))
        boxes.append(
            tuple(_Object(wnid, _box(_inside(rng, width, height))) for _ in range(rng.randint(1, 3)))
        )
    order = list(range(1, len(labels) + 1))
    rng.shuffle(order)
    return images, order, boxes


def _objects_for(
    oddity: str, rng: random.Random, wnid: str, image: _Image, occurrence: int, synsets: Sequence[str]
) -> tuple[tuple[int, int], tuple[_Object, ...], str]:
    """The <size> frame, objects and <filename> text of one annotated training image."""
    w, h = image.width, image.height
    stem = image.filename.removesuffix(".JPEG")

    def normal(count: int = 1) -> list[_Object]:
        return [_Object(wnid, _box(_inside(rng, w, h))) for _ in range(count)]

    frame, filename_text = (w, h), stem
    if oddity == "float_coordinates":
        objects = []
        for _ in range(1 + occurrence % 2):
            xmin, ymin = rng.uniform(0.5, w / 2 - 1), rng.uniform(0.5, h / 2 - 1)
            xmax, ymax = rng.uniform(xmin + 1, w - 1), rng.uniform(ymin + 1, h - 1)
            objects.append(_Object(wnid, _box((xmin, ymin, xmax, ymax))))
    elif oddity == "partly_outside":
        xmin, ymin, xmax, ymax = _inside(rng, w, h)
        left, right = -rng.randint(1, 10), w + rng.randint(1, 10)
        objects = [_Object(wnid, _box((left, ymin, right, ymax if occurrence % 2 else h + 3)))]
    elif oddity == "entirely_outside":
        # Right of the image on even occurrences, above it on odd ones.
        box = (w + 3, 2, w + 20, h - 2) if occurrence % 2 == 0 else (2, -20, w - 2, -3)
        objects = normal() + [_Object(wnid, _box(box))]
    elif oddity == "reversed_min_max":
        xmin, ymin, xmax, ymax = _inside(rng, w, h)
        objects = [
            _Object(wnid, _box((xmax, ymin, xmin, ymax) if occurrence % 2 == 0 else (xmax, ymax, xmin, ymin)))
        ]
    elif oddity == "zero_area":
        xmin, ymin, xmax, ymax = _inside(rng, w, h)
        objects = [_Object(wnid, _box((xmin, ymin, xmin, ymax)))] + (normal() if occurrence % 2 else [])
    elif oddity == "no_objects":
        objects = []
    elif oddity == "several_objects":
        objects = normal(3 + occurrence % 2)
    elif oddity == "other_synset_object":
        other = rng.choice([s for s in synsets if s != wnid])
        foreign = [_Object(other, _box(_inside(rng, w, h)))]
        objects = foreign if occurrence % 2 == 0 else normal() + foreign
    elif oddity == "junk_filename":
        filename_text = "%s"
        objects = normal()
    elif oddity == "frame_differs":
        frame = (2 * w, 2 * h)
        objects = [_Object(wnid, _box(_inside(rng, 2 * w, 2 * h)))]
    elif oddity.startswith("text_label:"):
        objects = [_Object(oddity.partition(":")[2], _box(_inside(rng, w, h)))]
    else:  # normal, png_image, cmyk_image: 1 to 3 ordinary boxes
        objects = normal(rng.choices((1, 2, 3), weights=(70, 20, 10))[0])
    return frame, tuple(objects), filename_text


def _plan_train_boxes(
    spec: SampleSpec, synset_order: Sequence[str], train: dict[str, list[_Image]]
) -> tuple[list[_Annotation], dict[str, list[str]]]:
    rng = _rng(spec, "bbox_train")
    synsets = release.challenge_synsets()
    chosen: dict[str, str] = {}  # image filename -> oddity (or "normal")
    by_name = {image.filename: (wnid, image) for wnid in synsets for image in train[wnid]}
    # Files that must carry an XML: the PNG, some CMYK files and the dog breeds with text labels.
    for name in sorted(release.png_train_files()):
        chosen[name] = "png_image"
    for name in rng.sample(sorted(release.cmyk_train_files()), CMYK_ANNOTATED):
        chosen[name] = "cmyk_image"
    for wnid, label, times in TEXT_LABELS:
        candidates = sorted(i.filename for i in train[wnid] if i.filename not in chosen)
        for name in rng.sample(candidates, min(times, len(candidates))):
            chosen[name] = f"text_label:{label}"
    # About 60% of all training images in all (or as many as the spec says), the rest drawn at random.
    rest = sorted(n for n in by_name if n not in chosen)
    wanted = spec.train_bbox_files
    if wanted is None:
        wanted = round(TRAIN_ANNOTATED_FRACTION * len(by_name))
    elif wanted > len(by_name):
        raise ValueError(
            f"SampleSpec.train_bbox_files={wanted}: more than the {len(by_name)} training images"
        )
    extra = max(0, wanted - len(chosen))
    picked = rng.sample(rest, min(extra, len(rest)))
    # The first few picks get the oddities, ODDITY_REPEATS of each; the rest are ordinary.
    assigned = [o for o in _ASSIGNED_ODDITIES for _ in range(ODDITY_REPEATS)]
    for name, oddity in zip(picked, assigned + ["normal"] * len(picked)):
        chosen[name] = oddity
    annotations: dict[str, list[_Annotation]] = {}
    oddities: dict[str, list[str]] = {o: [] for o in ODDITIES}
    occurrences: dict[str, int] = {}
    for name in sorted(chosen):  # sorted: the rng is consumed in a fixed order
        wnid, image = by_name[name]
        oddity = chosen[name]
        occurrence = occurrences[oddity] = occurrences.get(oddity, -1) + 1
        frame, objects, filename_text = _objects_for(oddity, rng, wnid, image, occurrence, synsets)
        annotation = _Annotation(wnid, image.filename.removesuffix(".JPEG"), filename_text, frame, objects)
        annotations.setdefault(wnid, []).append(annotation)
        kind = "text_label" if oddity.startswith("text_label:") else oddity
        if kind in oddities and kind != "several_objects":
            oddities[kind].append(annotation.member)
        if len(objects) >= 2:
            oddities["several_objects"].append(annotation.member)
    ordered = []
    for wnid in synset_order:
        group = annotations.get(wnid, [])
        rng.shuffle(group)
        ordered.extend(group)
    return ordered, {k: sorted(v) for k, v in oddities.items()}


def _plan_ids(spec: SampleSpec) -> dict[str, int]:
    """ILSVRC2012_IDs 1..1000 over the leaves in a seeded, non-alphabetical order (as in the devkit)."""
    leaves = list(release.challenge_synsets())
    _rng(spec, "ids").shuffle(leaves)
    return {wnid: i for i, wnid in enumerate(leaves, start=1)}


def _plan(spec: SampleSpec) -> _Plan:
    synset_order, train = _plan_train(spec)
    validation, validation_order, validation_boxes = _plan_validation(spec)
    annotations, oddities = _plan_train_boxes(spec, synset_order, train)
    ids = _plan_ids(spec)
    return _Plan(
        synset_order, train, validation, validation_order, validation_boxes, annotations, ids, oddities
    )


def reference_kept_boxes(
    folder: str, frame: tuple[int, int], objects: Sequence[tuple[str, Sequence[str]]]
) -> int:
    """How many of an XML's boxes the reference CSV keeps (the facts sheet's rules).

    A box named with a different WNID is dropped; a text label counts for the folder's synset.
    Coordinates are divided by the ``<size>`` frame, swapped where reversed, clamped to [0, 1];
    boxes left with zero width or height are dropped.
    """
    width, height = frame
    kept = 0
    for name, box in objects:
        if release.is_wnid(name) and name != folder:
            continue
        xmin, ymin, xmax, ymax = (float(v) for v in box)
        x0, x1 = sorted(min(max(v / width, 0.0), 1.0) for v in (xmin, xmax))
        y0, y1 = sorted(min(max(v / height, 0.0), 1.0) for v in (ymin, ymax))
        if x1 > x0 and y1 > y0:
            kept += 1
    return kept
