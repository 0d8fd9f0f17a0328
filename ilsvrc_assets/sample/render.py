"""The bytes of the sample's files, from the plan: images (JPEG, grayscale, CMYK, PNG), PASCAL VOC XML
annotations, the devkit's ``meta.mat`` and its text files.

Every output is a function of the plan and the spec alone: no time, host or user ends up in a file.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from xml.sax.saxutils import escape

from PIL import Image

from ilsvrc_assets import release
from ilsvrc_assets.sample.plan import _Image, _Object, _rng
from ilsvrc_assets.sample.spec import SAMPLE_VERSION, SampleSpec

_MAT_HEADER = f"MATLAB 5.0 MAT-file, Platform: posix, Created by: ilsvrc_assets sample v{SAMPLE_VERSION}"


class _Renderer:
    """Cheap but varied pictures: two colours blended through a gradient, plus a solid block."""

    def __init__(self, spec: SampleSpec):
        self.quality = spec.jpeg_quality
        self.photo_train = spec.photo_train_size is not None
        self.texture = _photo_texture(spec) if self.photo_train else None
        side = max(spec.image_size[1], spec.photo_train_size[1] if spec.photo_train_size else 0)
        linear = Image.linear_gradient("L").resize((side, side))
        radial = Image.radial_gradient("L").resize((side, side))
        self.masks = [
            linear,
            linear.transpose(Image.Transpose.ROTATE_90),
            linear.transpose(Image.Transpose.ROTATE_180),
            linear.transpose(Image.Transpose.ROTATE_270),
            radial,
        ]

    def photo(self, image: _Image) -> Image.Image:
        """A crop of the seeded noise texture, washed with a colour through a gradient mask."""
        w, h, look = image.width, image.height, image.look
        side = self.texture.width
        x, y = (look & 0xFFFF) % (side - w + 1), ((look >> 16) & 0xFFFF) % (side - h + 1)
        colour = ((look >> 32) & 0xFF, (look >> 40) & 0xFF, (look >> 48) & 0xFF)
        mask = self.masks[((look >> 56) & 0xFF) % len(self.masks)].crop((0, 0, w, h))
        return Image.composite(
            self.texture.crop((x, y, x + w, y + h)),
            Image.new("RGB", (w, h), colour),
            mask.point(lambda v: 160 + v // 4),  # 63% to 88% texture
        )

    def picture(self, image: _Image) -> Image.Image:
        w, h, look = image.width, image.height, image.look
        c1 = (look & 0xFF, (look >> 8) & 0xFF, (look >> 16) & 0xFF)
        c2 = ((look >> 24) & 0xFF, (look >> 32) & 0xFF, (look >> 40) & 0xFF)
        mask = self.masks[((look >> 48) & 0xFF) % len(self.masks)].crop((0, 0, w, h))
        picture = Image.composite(Image.new("RGB", (w, h), c1), Image.new("RGB", (w, h), c2), mask)
        x, y = ((look >> 56) & 0xF) * w // 16, ((look >> 60) & 0xF) * h // 16
        picture.paste(
            (255 - c1[0], 255 - c1[1], 255 - c1[2]), (x, y, min(w, x + w // 3 + 1), min(h, y + h // 3 + 1))
        )
        return picture

    def encode(self, image: _Image, train: bool = False) -> bytes:
        picture = self.photo(image) if train and self.photo_train else self.picture(image)
        out = io.BytesIO()
        if image.kind == "png":
            picture.save(out, format="PNG")  # Pillow writes no time chunk: deterministic
        elif image.kind == "cmyk":
            picture.convert("CMYK").save(out, format="JPEG", quality=self.quality)
        elif image.kind == "gray":
            picture.convert("L").save(out, format="JPEG", quality=self.quality)
        else:
            picture.save(out, format="JPEG", quality=self.quality)
        return out.getvalue()


# --- Encoding many images on every core --------------------------------------------------------

_worker_renderer: _Renderer | None = None  # in an encoding process: its renderer, made once


def _start_worker(spec: SampleSpec) -> None:
    global _worker_renderer
    _worker_renderer = _Renderer(spec)


def _encode_batch(images: Sequence[_Image], train: bool) -> list[bytes]:
    assert _worker_renderer is not None
    return [_worker_renderer.encode(image, train) for image in images]


def encoded_batches(
    spec: SampleSpec, batches: Iterable[Sequence[_Image]], train: bool, processes: int | None = None
) -> Iterator[list[bytes]]:
    """The encoded bytes of each batch of images, batch by batch, in order, encoded on every core.

    An image's bytes are a function of the spec and the image alone, so the processes that encode
    them (spawned, each with its own renderer) change no byte. At most a few batches per process are
    in flight, so memory stays flat however many images there are. With one core, no process is started.
    """
    processes = processes or len(os.sched_getaffinity(0))
    if processes <= 1:
        renderer = _Renderer(spec)
        for batch in batches:
            yield [renderer.encode(image, train) for image in batch]
        return
    with ProcessPoolExecutor(
        processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(spec,),
    ) as pool:
        pending: deque[Future[list[bytes]]] = deque()
        try:
            for batch in batches:
                pending.append(pool.submit(_encode_batch, list(batch), train))
                if len(pending) >= 4 * processes:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _photo_texture(spec: SampleSpec) -> Image.Image:
    """Seeded photo-like noise: coarse blotches plus strong per-pixel grain, twice the largest side."""
    import numpy as np

    rng = np.random.default_rng(list(f"ilsvrc-sample/{spec.seed}/photo".encode()))
    side = 2 * spec.photo_train_size[1]
    grain = 200  # per-pixel noise amplitude; sets the JPEG size (about 90 KB for 500 x 375 at q75)
    coarse = rng.integers(0, 256 - grain, (side // 4, side // 4, 3), dtype=np.uint8)
    blotches = np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BILINEAR))
    return Image.fromarray(blotches + rng.integers(0, grain, (side, side, 3), dtype=np.uint8))


def _xml(folder: str, filename_text: str, frame: tuple[int, int], objects: Sequence[_Object]) -> bytes:
    """One PASCAL VOC annotation, laid out like the release's files (tab-indented)."""
    parts = [
        "<annotation>\n",
        f"\t<folder>{escape(folder)}</folder>\n",
        f"\t<filename>{escape(filename_text)}</filename>\n",
        "\t<source>\n\t\t<database>ILSVRC_2012</database>\n\t</source>\n",
        f"\t<size>\n\t\t<width>{frame[0]}</width>\n\t\t<height>{frame[1]}</height>\n\t\t<depth>3</depth>\n\t</size>\n",
        "\t<segmented>0</segmented>\n",
    ]
    for obj in objects:
        xmin, ymin, xmax, ymax = obj.box
        parts.append(
            f"\t<object>\n\t\t<name>{escape(obj.name)}</name>\n\t\t<pose>Unspecified</pose>\n"
            "\t\t<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n"
            f"\t\t<bndbox>\n\t\t\t<xmin>{xmin}</xmin>\n\t\t\t<ymin>{ymin}</ymin>\n"
            f"\t\t\t<xmax>{xmax}</xmax>\n\t\t\t<ymax>{ymax}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        )
    parts.append("</annotation>\n")
    return "".join(parts).encode("utf-8")


def _meta_mat(spec: SampleSpec, ids: dict[str, int], train_counts: dict[str, int]) -> bytes:
    """The devkit's meta.mat: a (1860, 1) struct ``synsets``, leaves 1..1000, inner nodes 1001..1860."""
    import numpy as np
    import scipy.io  # only the devkit needs SciPy

    rng = _rng(spec, "meta")
    texts = release.synset_texts()
    leaves = set(ids)
    num_inner = release.NUM_HIERARCHY_NODES - release.NUM_SYNSETS
    inner_wnids = rng.sample(sorted(w for w in texts if w not in leaves), num_inner)
    # A tree: each inner node adopts k >= 2 orphans from the front of a queue and joins its back,
    # until the last node (the root) adopts what is left. sum(k - 1) must be leaves - 1.
    extra = [1] * num_inner
    for _ in range(release.NUM_SYNSETS - 1 - num_inner):
        extra[rng.randrange(num_inner)] += 1
    queue = sorted(ids, key=ids.get)
    rng.shuffle(queue)
    children: dict[str, list[str]] = {}
    for wnid, k in zip(inner_wnids[::-1], extra):  # built bottom-up, so the root gets ID 1001
        children[wnid], queue = queue[: k + 1], queue[k + 1 :] + [wnid]
    assert len(queue) == 1, "the hierarchy must have a single root"
    node_ids = dict(ids)
    node_ids.update({w: release.NUM_SYNSETS + 1 + i for i, w in enumerate(inner_wnids)})
    height: dict[str, int] = {w: 0 for w in leaves}
    total: dict[str, int] = dict(train_counts)
    for wnid in inner_wnids[::-1]:  # children before parents
        height[wnid] = 1 + max(height[c] for c in children[wnid])
        total[wnid] = sum(total[c] for c in children[wnid])

    fields = release.META_MAT_SYNSET_FIELDS
    synsets = np.empty((release.NUM_HIERARCHY_NODES, 1), dtype=[(f, object) for f in fields])
    for wnid, node_id in sorted(node_ids.items(), key=lambda item: item[1]):
        kids = children.get(wnid, [])
        words = texts.get(wnid, wnid)
        values = {
            "ILSVRC2012_ID": np.uint16(node_id),
            "WNID": wnid,
            "words": words,
            "gloss": f"stand-in gloss for {words.split(',')[0]} (built-in sample, not the WordNet definition)",
            "num_children": np.uint16(len(kids)),
            "children": np.array(sorted(node_ids[c] for c in kids), dtype=np.uint16),
            "wordnet_height": np.uint8(height[wnid]),
            "num_train_images": np.uint32(total[wnid]),
        }
        synsets[node_id - 1, 0] = tuple(values[f] for f in fields)
    out = io.BytesIO()
    scipy.io.savemat(out, {"synsets": synsets}, format="5", oned_as="row")
    data = bytearray(out.getvalue())
    # savemat stamps the current time into the 116-byte text header; a fixed text keeps it reproducible.
    data[:116] = _MAT_HEADER.encode("ascii").ljust(116)
    return bytes(data)


DEVKIT_README = """\
ILSVRC2012 development kit (stand-in generated by ilsvrc_assets sample v{version})
==============================================================================

This is NOT the official devkit. It has the official layout so that software reading the devkit
can be tested without an ImageNet login:

  data/meta.mat                                  the synset hierarchy: struct array `synsets`
                                                 with fields {fields}
  data/ILSVRC2012_validation_ground_truth.txt    one ILSVRC2012_ID per line; line i is
                                                 ILSVRC2012_val_<i, 8 digits>.JPEG
  evaluation/demo_eval.m                         a placeholder for the evaluation code

Leaves (num_children == 0) carry ILSVRC2012_ID 1..1000; their order is not alphabetical.
"""

DEMO_EVAL = """\
% demo_eval.m -- placeholder in the ilsvrc_assets stand-in devkit (the official one scores
% classification and localisation submissions against the ground truth).
load('../data/meta.mat');
gt = dlmread('../data/ILSVRC2012_validation_ground_truth.txt');
fprintf('%d synsets, %d validation images\\n', numel(synsets), numel(gt));
"""
