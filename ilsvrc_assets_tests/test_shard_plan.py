"""The shard plan: which image goes into which shard, the ledger of written shards, the fingerprint."""

from __future__ import annotations

import gc
import json
import os
import random
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from ilsvrc_assets import release, shard_plan
from ilsvrc_assets.shard_plan import (
    CompanionStats,
    RecordSource,
    ShardJob,
    ShardLedger,
    ShardStats,
    SplitPlan,
    assign_to_shards,
    filename_sort_key,
    fingerprint,
    plan_split,
)
from ilsvrc_assets.sources.official import ArchiveReader

# --- assign_to_shards ------------------------------------------------------------------------

NAMES = [f"n0{1440764 + s}_{i}.JPEG" for s in range(7) for i in random.Random(1).sample(range(1, 5000), 15)]


def test_assignment_puts_every_image_in_exactly_one_shard_with_even_sizes() -> None:
    shards = assign_to_shards(NAMES, 8)
    assert len(shards) == 8
    assert sorted(name for shard in shards for name in shard) == sorted(NAMES)
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(NAMES)
    # Shuffled across the split: a shard holds several classes.
    assert all(len({name.split("_")[0] for name in shard}) > 1 for shard in shards)


def test_assignment_does_not_depend_on_input_order() -> None:
    shuffled = NAMES[:]
    random.Random(7).shuffle(shuffled)
    assert assign_to_shards(shuffled, 8) == assign_to_shards(NAMES, 8) == assign_to_shards(NAMES[::-1], 8)
    assert assign_to_shards(NAMES, 8, seed=1) != assign_to_shards(NAMES, 8)


def test_assignment_is_pinned() -> None:
    # The assignment decides every shard's bytes: a change here must be deliberate.
    assert assign_to_shards([f"n01440764_{i}.JPEG" for i in range(10, 0, -1)], 3) == [
        ["n01440764_9.JPEG", "n01440764_8.JPEG", "n01440764_4.JPEG"],
        ["n01440764_6.JPEG", "n01440764_2.JPEG", "n01440764_3.JPEG"],
        ["n01440764_10.JPEG", "n01440764_5.JPEG", "n01440764_1.JPEG", "n01440764_7.JPEG"],
    ]


def test_assignment_with_fewer_images_than_shards() -> None:
    shards = assign_to_shards(["ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000001.JPEG"], 5)
    assert [len(s) for s in shards] == [0, 0, 1, 0, 1]  # bounds floor(i * 2 / 5)
    assert assign_to_shards([], 3) == [[], [], []]


def test_assignment_of_record_sources_uses_their_file_names() -> None:
    sources = [RecordSource(name, "n01440764", 1, "tench", 0, 1) for name in NAMES]
    by_source = assign_to_shards(sources[::-1], 4)
    assert [[s.filename for s in shard] for shard in by_source] == assign_to_shards(NAMES, 4)


def test_assignment_refuses_duplicates_and_no_shards() -> None:
    with pytest.raises(ValueError, match="same sort key"):
        assign_to_shards(["a_1.JPEG", "b_1.JPEG", "a_1.JPEG"], 2)
    with pytest.raises(ValueError, match="at least 1"):
        assign_to_shards(["a_1.JPEG"], 0)


def test_filename_sort_key_compares_numbers_numerically() -> None:
    names = [
        "n01440764_10.JPEG",
        "n01440764_9.JPEG",
        "n01440764_100.JPEG",
        "n01443537_2.JPEG",
        "ILSVRC2012_val_00000010.JPEG",
    ]
    assert sorted(names, key=filename_sort_key) == [
        "ILSVRC2012_val_00000010.JPEG",
        "n01440764_9.JPEG",
        "n01440764_10.JPEG",
        "n01440764_100.JPEG",
        "n01443537_2.JPEG",
    ]


# --- plan_split ------------------------------------------------------------------------------

SYNSET_TABLE = pd.DataFrame(
    {
        "wnid": ["n01440764", "n01443537", "n15075141"],
        "label": [1, 2, 1000],
        "text": ["tench, Tinca tinca", "goldfish, Carassius auratus", "toilet tissue"],
    }
)
WNIDS = list(SYNSET_TABLE["wnid"])


def _index(n: int = 23, seed: int = 3) -> pd.DataFrame:
    """An image index of ``n`` training images (as archives.read_index gives), in a shuffled order."""
    rows = [(f"{WNIDS[i % 3]}_{i + 1}.JPEG", WNIDS[i % 3], 1000 + 700 * i, 500 + i) for i in range(n)]
    random.Random(seed).shuffle(rows)
    return pd.DataFrame(rows, columns=["filename", "synset", "offset", "size"])


BOXES = {"n01440764_1.JPEG": [(0.1, 0.2, 0.5, 0.6)], "n01443537_5.JPEG": [(0.0, 0.0, 1.0, 1.0)] * 2}


def _plan(index: pd.DataFrame, num_shards: int = 4, **kwargs) -> dict[str, ShardJob]:
    return plan_split(
        "train",
        index,
        SYNSET_TABLE,
        BOXES,
        ArchiveReader(Path("archive.tar")),
        Path("out"),
        num_shards,
        **kwargs,
    )


def test_plan_puts_every_image_in_one_shard_with_what_its_record_says() -> None:
    index = _index()
    jobs = _plan(index)
    assert list(jobs) == release.shard_names("train", 4)
    assert all(
        job.path == Path("out") / name and job.reader.path == Path("archive.tar")
        for name, job in jobs.items()
    )
    records = [r for job in jobs.values() for r in job.records]
    assert sorted(r.filename for r in records) == sorted(index["filename"])
    for r in records:
        i = int(r.filename.split("_")[1].split(".")[0]) - 1
        label, text = {w: (l, t) for w, l, t in SYNSET_TABLE.itertuples(index=False)}[r.synset]
        assert (r.synset, r.label, r.text, r.offset, r.size) == (
            WNIDS[i % 3],
            label,
            text,
            1000 + 700 * i,
            500 + i,
        )
        assert r.boxes == tuple(BOXES.get(r.filename, ()))


def test_plan_is_the_same_whatever_the_order_of_the_index() -> None:
    assert _plan(_index(seed=3)) == _plan(_index(seed=4)) == _plan(_index(seed=3).iloc[::-1])
    assert _plan(_index(), seed=1) != _plan(_index())


def test_plan_cuts_the_shuffled_split_into_contiguous_pieces() -> None:
    jobs = _plan(_index(), num_shards=5)
    ordered = sorted(_index()["filename"], key=filename_sort_key)
    random.Random(release.SHUFFLE_SEED).shuffle(ordered)
    assert [r.filename for job in jobs.values() for r in job.records] == ordered
    assert [len(job.records) for job in jobs.values()] == [4, 5, 4, 5, 5]  # cuts at floor(i * 23 / 5)


def test_plan_of_wanted_shards_only() -> None:
    everything = _plan(_index())
    wanted = ["train-00003-of-00004", "train-00001-of-00004"]
    assert _plan(_index(), wanted=wanted) == {name: everything[name] for name in wanted}
    with pytest.raises(ValueError, match=r"not shards of this plan \(4 train shards\): train-00004-of-00004"):
        _plan(_index(), wanted=["train-00004-of-00004", "train-00000-of-00004"])


def test_split_plan_makes_each_job_when_asked_as_plan_split_makes_them_all() -> None:
    plan = SplitPlan(
        "train", _index(), SYNSET_TABLE, BOXES, ArchiveReader(Path("archive.tar")), Path("out"), 5
    )
    everything = _plan(_index(), num_shards=5)
    assert plan.names == list(everything)
    assert {name: plan.job(name) for name in reversed(plan.names)} == everything
    assert [plan.count(name) for name in plan.names] == [len(job.records) for job in everything.values()]
    with pytest.raises(ValueError, match=r"not shards of this plan \(5 train shards\): train-00005-of-00005"):
        plan.check(["train-00001-of-00005", "train-00005-of-00005"])


def test_the_kept_boxes_as_a_table_give_the_same_jobs_as_a_mapping() -> None:
    # The table's rows in any order (box 1 before box 0), and boxes of an image not in the index.
    rows = [
        ("n01443537_5.JPEG", 1, 0.0, 0.0, 1.0, 1.0),
        ("n01440764_1.JPEG", 0, 0.1, 0.2, 0.5, 0.6),
        ("n01443537_5.JPEG", 0, 0.25, 0.0, 0.75, 1.0),
        ("n01440764_999.JPEG", 0, 0.1, 0.1, 0.2, 0.2),
    ]
    table = pd.DataFrame(rows, columns=["image", "box", "xmin", "ymin", "xmax", "ymax"])
    mapping = {
        "n01440764_1.JPEG": [(0.1, 0.2, 0.5, 0.6)],
        "n01443537_5.JPEG": [(0.25, 0.0, 0.75, 1.0), (0.0, 0.0, 1.0, 1.0)],
        "n01440764_999.JPEG": [(0.1, 0.1, 0.2, 0.2)],
    }

    def jobs(boxes) -> dict[str, ShardJob]:
        return plan_split(
            "train", _index(), SYNSET_TABLE, boxes, ArchiveReader(Path("a.tar")), Path("out"), 4
        )

    assert jobs(table) == jobs(mapping)
    records = {r.filename: r for job in jobs(table).values() for r in job.records}
    assert records["n01443537_5.JPEG"].boxes == ((0.25, 0.0, 0.75, 1.0), (0.0, 0.0, 1.0, 1.0))
    assert sum(bool(r.boxes) for r in records.values()) == 2


@pytest.mark.parametrize(
    "names",
    [
        # The usual names, sorted on whole columns: ties of number broken by the whole name, text
        # compared by code point (upper before lower, accents after), numbers as numbers.
        [
            "a_01.JPEG",
            "a_1.JPEG",
            "a_1.png",
            "a_10.JPEG",
            "a_9.JPEG",
            "B_2.JPEG",
            "é_1.JPEG",
            "a.b_3.JPEG",
            "a_1.x_y",
            "_5.JPEG",
            "a_2.",
        ],
        ["ILSVRC2012_val_00000010.JPEG", "ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000001.JPEG"],
        # Names outside the pattern make the planner sort one by one, in the same order.
        ["a_1.JPEG", "a_2", "a_x.JPEG", "a_1.tar.gz", "a_²1.JPEG", "noscore.JPEG", "a_" + "9" * 25 + ".JPEG"],
    ],
)
def test_plan_orders_any_names_as_filename_sort_key_does(names: list[str]) -> None:
    index = pd.DataFrame(
        {"filename": names, "synset": WNIDS[0], "offset": range(len(names)), "size": 1}
    ).astype({"filename": "string", "synset": "string"})  # as archives.read_index gives them
    plan = SplitPlan("train", index, SYNSET_TABLE, {}, ArchiveReader(Path("archive.tar")), Path("out"), 2)
    expected = assign_to_shards(names, 2)
    # The first two lists take the column path, the last the one-by-one path.
    assert (shard_plan._sorted_positions(index["filename"]) is None) == ("noscore.JPEG" in names)
    assert [[r.filename for r in plan.job(name).records] for name in plan.names] == expected


def test_planning_leaves_the_garbage_collector_as_it_found_it() -> None:
    # The planner pauses it while it makes a split's records, and must hand it back either way.
    assert gc.isenabled()
    _plan(_index())
    assert gc.isenabled()
    gc.disable()
    try:
        _plan(_index())
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(ValueError, match="the same sort key"):
        _plan(pd.concat([_index(), _index().head(1)]))
    assert gc.isenabled()


# --- fingerprint -----------------------------------------------------------------------------


def test_fingerprint_changes_with_anything_that_changes_the_bytes() -> None:
    job = _plan(_index())["train-00000-of-00004"]
    first = job.records[0]
    same = fingerprint(job, "v1")
    assert fingerprint(replace(job), "v1") == same and len(same) == 64
    # What does not go into the shard's bytes does not change it.
    assert fingerprint(replace(job, path=Path("elsewhere"), lock=Path("lock")), "v1") == same
    changed = {
        "archive version": fingerprint(job, "v2"),
        "name": fingerprint(replace(job, name="train-00001-of-00004"), "v1"),
        "order": fingerprint(replace(job, records=job.records[::-1]), "v1"),
        "one record fewer": fingerprint(replace(job, records=job.records[1:]), "v1"),
    }
    for field, value in [
        ("filename", "n01440764_999.JPEG"),
        ("synset", "n01443537"),
        ("label", 2),
        ("text", "tench"),
        ("offset", first.offset + 512),
        ("size", first.size + 1),
        ("boxes", ((0.1, 0.2, 0.3, 0.4),)),
    ]:
        changed[field] = fingerprint(
            replace(job, records=(replace(first, **{field: value}), *job.records[1:])), "v1"
        )
    for what, value in changed.items():
        assert value != same, what


# --- ShardLedger -----------------------------------------------------------------------------


def _written(tmp_path: Path, name: str = "train-00000-of-00004") -> tuple[ShardJob, ShardStats]:
    path = tmp_path / "tfrecords" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 100)
    job = ShardJob(
        name,
        path,
        ArchiveReader(Path("archive.tar")),
        (RecordSource("n01440764_1.JPEG", "n01440764", 1, "tench", 0, 90),),
    )
    return job, ShardStats(name, path, 1, 100, "0" * 32, ("n01440764_1.JPEG",))


def test_ledger_reuses_a_shard_whose_fingerprint_and_file_are_unchanged(tmp_path: Path) -> None:
    job, stats = _written(tmp_path)
    ledger = ShardLedger(tmp_path / "state")
    assert ledger.reusable(job, "fp") is None  # nothing recorded yet
    ledger.record(stats, "fp")
    assert ledger.reusable(job, "fp") == stats
    assert ShardLedger(tmp_path / "state").reusable(job, "fp") == stats  # from the file, by a later run
    assert ledger.get(job.name)["md5"] == stats.md5
    assert ledger.reusable(job, "another plan") is None


def test_ledger_does_not_reuse_a_shard_altered_or_removed_since(tmp_path: Path) -> None:
    job, stats = _written(tmp_path)
    ledger = ShardLedger(tmp_path / "state")
    ledger.record(stats, "fp")
    st = job.path.stat()

    job.path.write_bytes(b"x" * 99)  # another size
    assert ledger.reusable(job, "fp") is None

    job.path.write_bytes(b"y" * 100)  # the same size, rewritten later
    os.utime(job.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert ledger.reusable(job, "fp") is None

    os.utime(job.path, ns=(st.st_atime_ns, st.st_mtime_ns))  # as recorded (only the MD5 could tell)
    assert ledger.reusable(job, "fp") == stats

    job.path.unlink()
    assert ledger.reusable(job, "fp") is None


def test_ledger_entries_without_a_time_are_judged_by_size_and_damaged_ones_ignored(tmp_path: Path) -> None:
    job, stats = _written(tmp_path)
    ledger = ShardLedger(tmp_path / "state")
    ledger.record(stats, "fp")
    entry_path = tmp_path / "state" / f"{job.name}.json"
    entry = json.loads(entry_path.read_text())
    del entry["mtime_ns"]  # as written before times were recorded
    entry_path.write_text(json.dumps(entry))
    os.utime(job.path, ns=(0, 0))
    assert ledger.reusable(job, "fp") == stats
    entry_path.write_text("{not json")
    assert ledger.get(job.name) is None and ledger.reusable(job, "fp") is None


def test_ledger_keeps_only_the_companions_still_as_written(tmp_path: Path) -> None:
    job, stats = _written(tmp_path)
    index = tmp_path / "tfrecords-index" / f"{job.name}.idx"
    index.parent.mkdir()
    index.write_bytes(b"0 100\n")
    stats = replace(stats, companions=(CompanionStats("index", index, 6, "1" * 32),))
    ledger = ShardLedger(tmp_path / "state")
    ledger.record(stats, "fp")
    assert ledger.reusable(job, "fp") == stats
    st = index.stat()
    index.write_bytes(b"0 99\n\n")  # the same size, written since
    os.utime(index, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert ledger.reusable(job, "fp") == replace(stats, companions=())  # the shard is, its index is not
    index.unlink()
    assert ledger.reusable(job, "fp") == replace(stats, companions=())
