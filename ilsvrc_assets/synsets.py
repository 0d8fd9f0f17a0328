"""The 1,000 classes and the validation ground truth, read from the devkit.

Two numberings meet here: the devkit's ``ILSVRC2012_ID`` (meta.mat order, used by the validation
ground truth) and the TF/TPU model zoo's 1-based label (the WNIDs sorted alphabetically). The
table this module builds carries both, so no later step has to guess which one it holds.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ilsvrc_assets import release, storage, tar_reader
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.stage import Log, Made, Verdict, quiet

if TYPE_CHECKING:
    from ilsvrc_assets.sources import ImageSource

SYNSET_COLUMNS = ("wnid", "label", "text", "ilsvrc2012_id", "words")


# meta.mat and the ground truth are a few hundred KB; a member claiming more is not the devkit's.
_MAX_DEVKIT_MEMBER = 64 * 1024 * 1024


class DevkitError(ValueError):
    """The devkit archive is damaged or not in the official layout; the message names it."""


@dataclass(frozen=True)
class Devkit:
    """What the preparation reads from ``ILSVRC2012_devkit_t12.tar.gz`` (or, for a copy without
    it, builds from the shipped reference files and what the copy carries: :func:`reference_devkit`)."""

    leaves: pd.DataFrame  # columns wnid, ilsvrc2012_id, words: the nodes with num_children == 0
    num_nodes: int  # leaves plus inner nodes of the hierarchy
    ground_truth: tuple[int, ...]  # ILSVRC2012_ID of validation image i at position i - 1
    origin: str = ""  # where the facts come from when not from the devkit ("" : the devkit)
    # False for a copy without the devkit: its leaves' ILSVRC2012_IDs are then only the sorted
    # position, used to express the ground truth, and the synset table leaves the column empty.
    official_ids: bool = True


def reference_devkit(
    words: Mapping[str, str] | None,
    words_from: str,
    labels: Sequence[str] | None,
    labels_from: str,
) -> Devkit:
    """The devkit's facts for a copy without the devkit, cross-checked with what the copy carries.

    ``words``: {WNID: words} as the copy lists its classes (Kaggle's ``LOC_synset_mapping.txt``),
    or None (the shipped ``imagenet_metadata.txt`` then); it must list exactly the 1,000 shipped
    WNIDs. ``labels``: the copy's validation labels (element i - 1 for image i: Kaggle's CSV, sorted
    folders, file-name suffixes), or None (the shipped label file then); checked against the
    shipped label file by ``agrees_with_shipped_labels``. The devkit's ILSVRC2012_IDs are in no
    other layout and cannot be derived (they are a third order, neither sorted nor the file's): the
    synset table leaves them empty (``official_ids`` False). The hierarchy's size is the release's.
    ``*_from`` name the files, for errors.
    """
    shipped = release.challenge_synsets()
    if words is not None:
        extra = sorted(set(words) - set(shipped))
        missing = sorted(set(shipped) - set(words))
        if extra or missing:
            raise DevkitError(
                f"{words_from}: lists {len(words):,} synsets, not the 1,000 of the challenge"
                + (f"; not challenge synsets: {', '.join(extra[:5])}" if extra else "")
                + (f"; missing: {', '.join(missing[:5])}" if missing else "")
            )
    texts = release.synset_texts()
    ids = {wnid: i for i, wnid in enumerate(sorted(shipped), start=1)}  # internal only, not published
    leaves = pd.DataFrame(
        [(w, ids[w], (words or {}).get(w) or texts.get(w, w)) for w in sorted(shipped, key=ids.__getitem__)],
        columns=["wnid", "ilsvrc2012_id", "words"],
    )
    if labels is None:
        labels, labels_from = release.validation_synsets(), "the shipped validation label file"
    unknown = [(i, w) for i, w in enumerate(labels, start=1) if w not in ids]
    if unknown:
        number, wnid = unknown[0]
        raise DevkitError(
            f"{labels_from}: {release.validation_filename(number)} is labelled {wnid!r}, not one of the "
            f"1,000 challenge synsets ({len(unknown):,} such labels)"
        )
    origin = f"shipped reference files ({words_from if words is not None else 'imagenet_metadata.txt'}, {labels_from})"
    return Devkit(
        leaves, release.NUM_HIERARCHY_NODES, tuple(ids[w] for w in labels), origin, official_ids=False
    )


def read_devkit(path: Path) -> Devkit:
    """Read meta.mat and the validation ground truth from the devkit archive (streamed)."""
    wanted = {release.DEVKIT_META_MAT, release.DEVKIT_VALIDATION_GROUND_TRUTH}
    found: dict[str, bytes] = {}
    if not path.is_file():
        raise DevkitError(f"{path}: devkit archive not found")
    try:
        with tar_reader.open_gzip_tar(path) as stream:
            members = tar_reader.stream_members(
                stream, path.name, max_size=_MAX_DEVKIT_MEMBER, wanted=lambda name: name in wanted
            )
            for member, data in members:
                if data is not None:
                    found[member.name] = data
    except tar_reader.TarError as e:
        raise DevkitError(str(e)) from e  # names the archive (and member), and what to do
    for name in sorted(wanted - found.keys()):
        raise DevkitError(f"{path.name}: member {name} is missing; is this ILSVRC2012_devkit_t12.tar.gz?")
    leaves, num_nodes = parse_meta_mat(
        found[release.DEVKIT_META_MAT], f"{path.name} member {release.DEVKIT_META_MAT}"
    )
    ground_truth = parse_ground_truth(
        found[release.DEVKIT_VALIDATION_GROUND_TRUTH],
        f"{path.name} member {release.DEVKIT_VALIDATION_GROUND_TRUTH}",
    )
    return Devkit(leaves=leaves, num_nodes=num_nodes, ground_truth=ground_truth)


def parse_meta_mat(data: bytes, where: str) -> tuple[pd.DataFrame, int]:
    """The leaves of the ``synsets`` struct in meta.mat, by field name, and the node count."""
    import scipy.io  # only this step needs SciPy; keep it off the import path of the rest

    try:
        mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)
    except Exception as e:  # scipy raises a variety of errors for a damaged file
        raise DevkitError(f"{where}: not a readable MATLAB file ({e})") from e
    if "synsets" not in mat:
        raise DevkitError(f"{where}: has no 'synsets' variable")
    synsets = mat["synsets"]
    names = synsets.dtype.names or ()
    missing = [f for f in ("ILSVRC2012_ID", "WNID", "words", "num_children") if f not in names]
    if missing:
        raise DevkitError(f"{where}: 'synsets' lacks the field(s) {', '.join(missing)}")
    rows = []
    for node in synsets.reshape(-1):
        if int(node["num_children"]) == 0:
            rows.append((str(node["WNID"]).strip(), int(node["ILSVRC2012_ID"]), str(node["words"]).strip()))
    leaves = pd.DataFrame(rows, columns=["wnid", "ilsvrc2012_id", "words"])
    return leaves, int(synsets.size)


def parse_ground_truth(data: bytes, where: str) -> tuple[int, ...]:
    """One ILSVRC2012_ID per line; line i is validation image i."""
    ids = []
    for number, line in enumerate(data.decode("ascii", errors="replace").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if not line.isdigit():
            raise DevkitError(f"{where}: line {number} is {line!r}, not an ILSVRC2012_ID")
        ids.append(int(line))
    return tuple(ids)


def synset_table(devkit: Devkit) -> pd.DataFrame:
    """The 1,000 classes: WNID, 1-based TF label, text, devkit ILSVRC2012_ID, devkit words.

    The label is 1 + the WNID's position in the sorted list of the devkit's leaves; the text is
    the reference ``imagenet_metadata.txt`` entry (what the model zoo's records carry), falling
    back to the devkit's words for a WNID it does not list.
    """
    texts = release.synset_texts()
    table = devkit.leaves.sort_values("wnid", kind="stable").reset_index(drop=True)
    table.insert(1, "label", range(1, len(table) + 1))
    table.insert(2, "text", [texts.get(w, words) for w, words in zip(table["wnid"], table["words"])])
    if not devkit.official_ids:
        table["ilsvrc2012_id"] = pd.array([pd.NA] * len(table), dtype="Int64")  # written as empty
    return table[list(SYNSET_COLUMNS)]


def synset_problems(table: pd.DataFrame, num_nodes: int | None = None) -> list[str]:
    """What is wrong with a synset table against the release facts and the shipped list ([] if nothing)."""
    problems = []
    shipped = release.challenge_synsets()
    wnids = list(table["wnid"])
    if len(wnids) != release.NUM_SYNSETS:
        problems.append(f"{len(wnids)} leaf synsets in meta.mat, expected {release.NUM_SYNSETS}")
    duplicates = sorted(w for w, n in Counter(wnids).items() if n > 1)
    if duplicates:
        problems.append(f"duplicate WNIDs: {', '.join(duplicates[:10])}")
    extra = sorted(set(wnids) - set(shipped))
    missing = sorted(set(shipped) - set(wnids))
    if extra:
        problems.append(f"{len(extra)} WNIDs not in the shipped synset list, e.g. {', '.join(extra[:5])}")
    if missing:
        problems.append(f"{len(missing)} shipped WNIDs missing from meta.mat, e.g. {', '.join(missing[:5])}")
    ids = sorted(table["ilsvrc2012_id"].dropna().replace("", pd.NA).dropna().astype(int))
    if ids and ids != list(range(1, len(ids) + 1)):  # none: a copy without the devkit
        problems.append("the leaves' ILSVRC2012_IDs are not exactly 1..N")
    if not problems and list(table["label"]) != list(range(1, release.NUM_SYNSETS + 1)):
        problems.append("TF labels are not 1..1000 in sorted WNID order")
    return problems


def validation_labels(devkit: Devkit, table: pd.DataFrame) -> list[str]:
    """The devkit's ground truth mapped through meta.mat to WNIDs (element i - 1 is image i)."""
    by_id = dict(zip(table["ilsvrc2012_id"], table["wnid"]))
    labels = []
    for number, devkit_id in enumerate(devkit.ground_truth, start=1):
        if devkit_id not in by_id:
            raise DevkitError(
                f"validation ground truth line {number}: ILSVRC2012_ID {devkit_id} is not a leaf of meta.mat"
            )
        labels.append(by_id[devkit_id])
    return labels


def validation_label_problems(labels: Sequence[str], limit: int = 10) -> list[str]:
    """Differences between the devkit-derived labels and the shipped validation label file."""
    shipped = release.validation_synsets()
    problems = []
    if len(labels) != len(shipped):
        problems.append(
            f"the devkit ground truth has {len(labels)} lines, the shipped label file {len(shipped)}"
        )
    mismatches = [i for i, (a, b) in enumerate(zip(labels, shipped), start=1) if a != b]
    for i in mismatches[:limit]:
        problems.append(
            f"{release.validation_filename(i)}: devkit says {labels[i - 1]}, shipped label file says {shipped[i - 1]}"
        )
    if len(mismatches) > limit:
        problems.append(f"... and {len(mismatches) - limit} more mismatches")
    return problems


def write_csv(table: pd.DataFrame, path: Path) -> None:
    """Publish a table as CSV (whole or not at all)."""
    with storage.open_output(path, "w") as f:
        table.to_csv(f, index=False)


def read_synsets(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: synset table not found; materialise the 'synsets' asset first")
    return pd.read_csv(path, dtype={"wnid": str, "text": str, "words": str}, keep_default_na=False)


def write_validation_labels(labels: Sequence[str], path: Path) -> None:
    table = pd.DataFrame(
        {
            "filename": [release.validation_filename(i) for i in range(1, len(labels) + 1)],
            "synset": list(labels),
        }
    )
    write_csv(table, path)


def read_validation_labels(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: validation labels not found; materialise 'validation_labels' first")
    return list(pd.read_csv(path, dtype=str)["synset"])


# --- The stages and their checks -----------------------------------------------------------------


def make_synsets(settings: Settings, source: ImageSource, log: Log = quiet) -> Made:
    """Stage ``synsets``: the 1,000 classes from the devkit's meta.mat, to ``<data>/synsets.csv``."""
    devkit = source.read_devkit(log)
    table = synset_table(devkit)
    write_csv(table, settings.synsets_csv)
    facts: dict = {"synsets": len(table), "hierarchy_nodes": devkit.num_nodes}
    if devkit.origin:
        facts["devkit_facts_from"] = devkit.origin
    if not devkit.official_ids:
        facts["ilsvrc2012_ids"] = "empty: only the devkit's meta.mat has them, and this copy has no devkit"
    return Made(settings.synsets_csv, facts, preview=table)


def synsets_verdict(settings: Settings) -> Verdict:
    """Check ``one_thousand_synsets``: the table on disk against the release facts."""
    table = read_synsets(settings.synsets_csv)
    return Verdict(
        synset_problems(table), f"{len(table)} synsets, as the shipped list", {"synsets": len(table)}
    )


def make_validation_labels(settings: Settings, source: ImageSource, log: Log = quiet) -> Made:
    """Stage ``validation_labels``: the devkit ground truth mapped to WNIDs, to
    ``<data>/validation_labels.csv`` (needs ``synsets``)."""
    devkit = source.read_devkit(log)
    labels = validation_labels(devkit, devkit.leaves)
    write_validation_labels(labels, settings.validation_labels_csv)
    return Made(
        settings.validation_labels_csv,
        {
            "images": len(labels),
            "first_image": f"{release.validation_filename(1)} -> {labels[0] if labels else '-'}",
        },
    )


def validation_labels_verdict(settings: Settings) -> Verdict:
    """Check ``agrees_with_shipped_labels``: the labels on disk against the shipped label file."""
    labels = read_validation_labels(settings.validation_labels_csv)
    return Verdict(validation_label_problems(labels), f"all {len(labels)} labels agree with the shipped file")
