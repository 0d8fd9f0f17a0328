"""The WebDataset format: tars read back with the ``webdataset`` library equal the TFRecords record by
record; reproducible; nothing partial left by a failed or killed write; the checks catch damage.

One module-scoped build: the webdataset jobs run on a copy of the session's built sample graph, with
their own shard counts (3 training and 2 validation tars beside 8 and 4 TFRecord shards).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ilsvrc_assets import formats, images, manifest, shard_previews, shards, versions
from ilsvrc_assets import settings as settings_module
from ilsvrc_assets.definitions import build_definitions, job_for
from ilsvrc_assets.defs.manifest import written_shards
from ilsvrc_assets.defs.outputs import FORMAT_ASSETS
from ilsvrc_assets.formats.webdataset import FORMAT, INFO_JSON
from ilsvrc_assets.record_workers import RecordWorkers
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.shard_plan import RecordSource, ShardJob
from ilsvrc_assets.shards import ShardError, write_shard
from ilsvrc_assets.sources import from_settings
from ilsvrc_assets.sources.official import ArchiveReader
from ilsvrc_assets_tests.helpers import (
    discard_unpublished,
    evaluations,
    gray_jpeg,
    rgb_jpeg,
    run_job,
    temp_files,
)

pytestmark = pytest.mark.long(seconds=250)  # conftest: the long files start first

wds = pytest.importorskip("webdataset")

README = Path(__file__).parents[2] / "README.md"
WDS_SHARDS = {"train": 3, "validation": 2}
TENCH = RecordSource("n01440764_1.JPEG", "n01440764", 1, "tench, Tinca tinca", 0, 0, ((0.1, 0.2, 0.5, 0.6),))
GOLDFISH = RecordSource("ILSVRC2012_val_00000001.JPEG", "n01443537", 2, "goldfish, Carassius auratus", 0, 0)


# --- The format on its own -------------------------------------------------------------------


def test_the_format_is_found_by_its_name_and_travels_to_workers() -> None:
    assert formats.by_name("webdataset") is FORMAT
    assert (FORMAT.folder, FORMAT.asset_suffix) == ("webdataset", "webdataset")
    assert FORMAT.file_name("train-00000-of-01024") == "imagenet1k-train-0000.tar"
    assert FORMAT.file_name("validation-00063-of-00064") == "imagenet1k-validation-0063.tar"
    assert FORMAT.file_name("train-12344-of-12345") == "imagenet1k-train-12344.tar"
    assert pickle.loads(pickle.dumps(FORMAT)).file_name("train-00001-of-00002") == "imagenet1k-train-0001.tar"


def _write(path: Path, added: list[tuple[RecordSource, bytes]]) -> Path:
    with FORMAT.open(path) as writer:
        for source, image in added:
            writer.add(source, image, images.probe(image, source.filename))
    return path


def test_a_shard_is_three_members_per_image_with_fixed_headers(tmp_path: Path) -> None:
    added = [(TENCH, rgb_jpeg(40, 30)), (GOLDFISH, gray_jpeg(7, 5))]
    path = _write(tmp_path / "a.tar", added)
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "n01440764_1.jpg",
        "n01440764_1.cls",
        "n01440764_1.json",
        "ILSVRC2012_val_00000001.jpg",
        "ILSVRC2012_val_00000001.cls",
        "ILSVRC2012_val_00000001.json",
    ]
    assert {(m.mtime, m.mode, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0o444, 0, 0, "", "")}
    samples = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [(s["__key__"], s["jpg"], s["cls"]) for s in samples] == [
        ("n01440764_1", added[0][1], b"0"),
        ("ILSVRC2012_val_00000001", added[1][1], b"1"),
    ]
    assert json.loads(samples[0]["json"]) == {
        "wnid": "n01440764",
        "text": "tench, Tinca tinca",
        "label": 1,
        "width": 40,
        "height": 30,
        "boxes": [[0.1, 0.2, 0.5, 0.6]],
    }
    # The bytes Python's tarfile writes for the same members (ustar, the same fixed fields).
    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in zip(members, [m for s in samples for m in (s["jpg"], s["cls"], s["json"])]):
            tar.addfile(member, io.BytesIO(data))
    assert path.read_bytes() == reference.getvalue()
    # Written again (later, so any clock in a header would differ): the same bytes.
    time.sleep(1.1)
    assert _write(tmp_path / "b.tar", added).read_bytes() == path.read_bytes()
    scan = FORMAT.scan(path)
    assert (scan.records, scan.parse_errors, scan.decode_errors, scan.labels) == (2, 0, 0, {1: 1, 2: 1})
    # A shard without images is a valid, empty tar.
    empty = _write(tmp_path / "empty.tar", [])
    assert list(wds.WebDataset(str(empty), shardshuffle=False, empty_check=False)) == []
    assert FORMAT.scan(empty).records == 0


def test_space_needed_is_at_least_what_a_shard_takes(tmp_path: Path) -> None:
    added = [(TENCH, rgb_jpeg(64, 48)), (GOLDFISH, gray_jpeg(3, 2))] * 5
    path = _write(tmp_path / "a.tar", added)
    job = ShardJob(
        "train-00000-of-00001",
        path,
        ArchiveReader(tmp_path / "archive.tar"),
        tuple(replace(s, size=len(image)) for s, image in added),
    )
    assert path.stat().st_size <= FORMAT.space_needed(job) <= 4 * path.stat().st_size + 10240


def _archive(tmp_path: Path, members: list[tuple[str, bytes]]) -> tuple[Path, list[RecordSource]]:
    path = tmp_path / "ILSVRC2012_img_val.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        sources = [
            RecordSource(m.name, "n01440764", 1, "tench, Tinca tinca", m.offset_data, m.size) for m in tar
        ]
    return path, sources


def test_a_failed_write_leaves_nothing_partial(tmp_path: Path) -> None:
    archive, sources = _archive(
        tmp_path,
        [(f"ILSVRC2012_val_0000000{i}.JPEG", rgb_jpeg(40, 30)) for i in (1, 2)]
        + [("ILSVRC2012_val_00000003.JPEG", b"not an image at all")],
    )
    out = tmp_path / "webdataset"
    job = ShardJob(
        "validation-00000-of-00001",
        out / FORMAT.file_name("validation-00000-of-00001"),
        ArchiveReader(archive),
        tuple(sources),
    )
    with pytest.raises(ShardError, match="validation-00000-of-00001: .*ILSVRC2012_val_00000003.JPEG"):
        write_shard(job, FORMAT)
    assert list(out.iterdir()) == []  # neither the tar nor its temporary file


def test_a_killed_write_leaves_nothing_partial_and_the_next_run_cleans_up(tmp_path: Path) -> None:
    # A writer killed (SIGKILL) midway through a shard: only its temporary file is left, never the
    # tar under its final name, and the next run of the stage removes the temporary file.
    out = tmp_path / "webdataset"
    out.mkdir()
    final = out / "imagenet1k-train-0000.tar"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from ilsvrc_assets import images, storage
        from ilsvrc_assets.formats.webdataset import FORMAT
        from ilsvrc_assets.shard_plan import RecordSource
        from ilsvrc_assets_tests.helpers import rgb_jpeg

        final = Path({str(final)!r})
        image = rgb_jpeg(40, 30)
        with storage.store_for(final).staged_file(final) as tmp, FORMAT.open(tmp) as writer:
            for i in range(10**6):
                source = RecordSource(f"n01440764_{{i}}.JPEG", "n01440764", 1, "tench", 0, len(image))
                writer.add(source, image, images.probe(image, "x"))
                if i == 50:
                    print("writing", flush=True)
                    time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), *sys.path])}
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert process.stdout is not None and process.stdout.readline() == b"writing\n"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert not final.exists() and len(temp_files(out)) == 1
    from ilsvrc_assets import storage

    assert storage.store_for(out).remove_partial(out) == 1 and list(out.iterdir()) == []


# --- A build of the sample -------------------------------------------------------------------


class Built:
    def __init__(self, settings: Settings, instance, results: list, workers: RecordWorkers):
        self.settings = settings
        self.instance = instance
        self.results = results
        self.workers = workers
        self.folder = settings.data_dir / FORMAT.folder

    def tars(self, split: str) -> list[Path]:
        return [self.folder / FORMAT.file_name(n) for n in self.settings.shard_names(split, "webdataset")]

    def verdicts(self) -> dict:
        return manifest.dataset_verdicts(
            self.settings,
            self.workers,
            written_shards(self.instance, self.settings, FORMAT),
            official={},
            record_format=FORMAT,
        )


def _range_tags(settings: Settings, asset: str) -> dict[str, str]:
    job = build_definitions(settings).resolve_job_def(job_for(asset))
    if job.partitions_def is None:
        return {}
    keys = job.partitions_def.get_partition_keys()
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}


@pytest.fixture(scope="module")
def built(built_graph_copy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """The webdataset assets materialised (as `ilsvrc-assets build` runs them) on a private copy of
    the built sample's outputs, with webdataset's own shard counts."""
    base, instance = built_graph_copy
    data_dir = tmp_path_factory.mktemp("wds") / "data"
    # What the webdataset assets read (the tables, indexes, ledgers); the TFRecords to compare with,
    # linked; not the validation tree, the previews nor the published versions.
    shutil.copytree(
        base.data_dir,
        data_dir,
        ignore=lambda folder, names: (
            {"validation", "previews", "tfrecords", "tfrecords-index", versions.VERSIONS} & set(names)
            if Path(folder) == base.data_dir
            else {"locks"} & set(names)
        ),
    )
    (data_dir / "tfrecords").symlink_to(base.tfrecords_dir)
    settings = replace(
        base,
        data_dir=data_dir,
        formats=("tfrecord", "webdataset"),
        webdataset_shards=dict(WDS_SHARDS),
    )
    results = [
        run_job(settings, instance, job_for(asset), tags=_range_tags(settings, asset))
        for asset in FORMAT_ASSETS["webdataset"]
    ]
    with RecordWorkers(1) as workers:
        yield Built(settings, instance, results, workers)


def _tfrecords(settings: Settings, split: str) -> Iterator[dict]:
    """Every record of the split's TFRecords in shard order (parsed by protobuf, as the previews do:
    importing TensorFlow would cost more than the reading)."""
    for name in settings.shard_names(split):
        for feature in shard_previews.first_records(settings.tfrecords_dir / name, sys.maxsize):
            yield {
                "filename": feature["image/filename"][0].decode(),
                "encoded": feature["image/encoded"][0],
                "label": feature["image/class/label"][0],
                "synset": feature["image/class/synset"][0].decode(),
                "text": feature["image/class/text"][0].decode(),
                "size": (feature["image/width"][0], feature["image/height"][0]),
                "boxes": list(
                    zip(*(feature[f"image/object/bbox/{k}"] for k in ("xmin", "ymin", "xmax", "ymax")))
                ),
            }


def test_the_build_materialises_the_tars_and_their_checks_pass(built: Built) -> None:
    assert all(result.success for result in built.results)
    found = evaluations(*built.results)
    assert {k for k in found if k.startswith("webdataset_manifest:")} == {
        f"webdataset_manifest:{name}" for name in manifest.checks_for(FORMAT)
    }
    assert all(e.passed for k, e in found.items() if k.startswith("webdataset_manifest:"))
    assert sorted(p.name for p in built.folder.iterdir()) == sorted(
        [
            INFO_JSON,
            "manifest.json",
            *versions.MARKER_FILES,  # published: built.folder is what readers see
            *(p.name for split in ("train", "validation") for p in built.tars(split)),
        ]
    )
    assert temp_files(built.folder) == []


@pytest.mark.parametrize("split", ["train", "validation"])
def test_the_tars_read_with_webdataset_equal_the_tfrecords_record_by_record(built: Built, split: str) -> None:
    urls = [str(p) for p in built.tars(split)]
    samples = list(wds.WebDataset(urls, shardshuffle=False).to_tuple("__key__", "jpg", "cls", "json"))
    records = list(_tfrecords(built.settings, split))
    # The same shuffle, cut into fewer shards: in shard order, the same sequence of images.
    assert len(samples) == len(records) > 0
    labels = set()
    for (key, jpg, cls_bytes, json_bytes), record in zip(samples, records):
        cls, meta = int(cls_bytes), json.loads(json_bytes)
        assert key + ".JPEG" == record["filename"]
        assert jpg == record["encoded"]
        assert cls == record["label"] - 1 == meta["label"] - 1
        assert (meta["wnid"], meta["text"], (meta["width"], meta["height"])) == (
            record["synset"],
            record["text"],
            record["size"],
        )
        # The same boxes (the TFRecord keeps them as float32).
        assert [tuple(float(np.float32(x)) for x in box) for box in meta["boxes"]] == record["boxes"]
        labels.add(cls)
    assert labels == set(range(1000))


def test_info_json_is_what_timms_webdataset_reader_reads(built: Built) -> None:
    # timm's reader_wds: _info.json at the root, info["splits"][split] with num_samples, filenames
    # (relative to the root), shard_lengths and name.
    info = json.loads((built.folder / INFO_JSON).read_text())
    assert set(info["splits"]) == {"train", "validation"}
    for split, entry in info["splits"].items():
        assert set(entry) == {"name", "num_samples", "filenames", "shard_lengths"} and entry["name"] == split
        assert entry["filenames"] == [p.name for p in built.tars(split)]
        lengths = []
        for filename in entry["filenames"]:
            with tarfile.open(built.folder / filename) as tar:  # the headers only
                lengths.append(sum(1 for name in tar.getnames() if name.endswith(".jpg")))
        assert entry["shard_lengths"] == lengths and entry["num_samples"] == sum(lengths)
        assert max(lengths) - min(lengths) <= 1


def test_a_second_write_gives_the_same_bytes_and_unchanged_tars_are_not_rewritten(built: Built) -> None:
    settings, tars = built.settings, built.tars("train")
    names = settings.shard_names("train", "webdataset")
    before = {p.name: p.read_bytes() for p in tars}
    try:
        again = shards.write_split_shards(
            settings, "train", from_settings(settings), built.workers, record_format=FORMAT
        )
        assert again.facts["shards_written"] == 0  # the ledger: nothing changed
        # Forgotten by the ledger: written again (into the new, unpublished version), to the same bytes.
        (settings.state_dir / "webdataset" / f"{names[1]}.json").unlink()
        rewritten = shards.write_split_shards(
            settings, "train", from_settings(settings), built.workers, wanted=names, record_format=FORMAT
        )
        assert rewritten.facts["shards_written"] == 1
        assert {p.name: p.read_bytes() for p in rewritten.path.glob("*train*")} == before
    finally:
        discard_unpublished(settings, "webdataset")
    assert {p.name: p.read_bytes() for p in tars} == before
    # The TFRecords' ledger is their own: the same shard names, untouched.
    assert all((settings.state_dir / "shards" / f"{n}.json").is_file() for n in settings.shard_names("train"))


@pytest.fixture
def damage(built: Built) -> Iterator[Callable[[Path, Callable[[str, bytes], bytes | None]], None]]:
    """Rewrite a tar with each member passed through ``edit(name, data)`` (None drops the tar); restored
    after, modification time included (the ledger takes a tar with another time as rewritten)."""
    saved: dict[Path, tuple[bytes, int]] = {}

    def rewrite(path: Path, edit: Callable[[str, bytes], bytes | None]) -> None:
        saved.setdefault(path, (path.read_bytes(), path.stat().st_mtime_ns))
        with tarfile.open(path) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for member, data in members:
                new = edit(member.name, data)
                member.size = len(new)
                tar.addfile(member, io.BytesIO(new))
        path.write_bytes(out.getvalue())

    yield rewrite
    for path, (data, mtime_ns) in saved.items():
        path.write_bytes(data)
        os.utime(path, ns=(mtime_ns, mtime_ns))


def test_the_checks_catch_a_missing_tar(built: Built, tmp_path: Path) -> None:
    gone = built.tars("validation")[1]
    shutil.move(gone, tmp_path / gone.name)
    try:
        verdicts = built.verdicts()
    finally:
        shutil.move(tmp_path / gone.name, gone)
    assert verdicts["every_shard_present"].problems[0].startswith(f"{gone.name}: missing from {built.folder}")
    assert (
        "materialise validation_webdataset, partition validation-00001-of-00002"
        in verdicts["every_shard_present"].problems[0]
    )
    assert not verdicts["record_totals"].passed
    assert built.verdicts()["every_shard_present"].passed  # restored


def test_the_checks_catch_a_wrong_label(built: Built, damage) -> None:
    path = built.tars("train")[0]
    first = {}

    def wrong_cls(name: str, data: bytes) -> bytes:
        if name.endswith(".cls") and not first:
            first[name] = data
            return str((int(data) + 1) % 1000).encode()
        return data

    damage(path, wrong_cls)
    verdicts = built.verdicts()
    (name,) = first
    assert not verdicts["every_shard_present"].passed  # its MD5 is not the one written
    (problem,) = verdicts["records_parse"].problems
    assert path.name in problem and name.removesuffix(".cls") in problem and ".json label" in problem
    assert verdicts["images_decode"].passed


def test_the_checks_catch_an_undecodable_jpg(built: Built, damage) -> None:
    path = built.tars("train")[2]
    cut = []

    def truncate(name: str, data: bytes) -> bytes:
        if name.endswith(".jpg") and not cut:
            cut.append(name)
            return data[: len(data) // 2]
        return data

    damage(path, truncate)
    verdicts = built.verdicts()
    (problem,) = verdicts["images_decode"].problems
    assert path.name in problem and cut[0].removesuffix(".jpg") in problem
    assert verdicts["records_parse"].passed


def test_the_readme_example_runs_against_the_build(built: Built) -> None:
    text = README.read_text()
    block = re.search(r"```python\n(import webdataset as wds\n.*?)```", text, re.DOTALL)
    assert block is not None, "README: the webdataset loading example"
    code = block.group(1)
    example_urls = "data/webdataset/imagenet1k-train-{0000..1023}.tar"
    assert example_urls in code
    ours = f"{built.folder}/imagenet1k-train-{{0000..{WDS_SHARDS['train'] - 1:04d}}}.tar"
    namespace: dict = {}
    example = compile(code.replace(example_urls, ours), "README.md", "exec")
    exec(example, namespace)  # noqa: S102 (the README's example, run as written)
    image, label, meta = namespace["image"], namespace["label"], namespace["meta"]
    assert image.mode == "RGB" and image.size == (meta["width"], meta["height"])
    assert 0 <= label < 1000 and meta["label"] == label + 1


# --- Choosing formats ------------------------------------------------------------------------


def test_ilsvrc_formats_chooses_what_the_build_writes(tmp_path: Path) -> None:
    from ilsvrc_assets.cli import _stages

    load = settings_module.load
    assert load({}).formats == ("tfrecord",)
    both = load({"ILSVRC_FORMATS": " WebDataset , tfrecord", "ILSVRC_WEBDATASET_TRAIN_SHARDS": "4"})
    assert both.formats == ("tfrecord", "webdataset") and both.webdataset_shards == {
        "train": 4,
        "validation": 64,
    }
    assert load({"ILSVRC_FORMATS": "webdataset"}).formats == ("tfrecord", "webdataset")  # TFRecords always
    with pytest.raises(settings_module.SettingsError, match="ILSVRC_FORMATS='parquet'"):
        load({"ILSVRC_FORMATS": "parquet"})
    with pytest.raises(settings_module.SettingsError, match="ILSVRC_WEBDATASET_VALIDATION_SHARDS"):
        load({"ILSVRC_WEBDATASET_VALIDATION_SHARDS": "0"})
    # Every format's assets are in the code location; the build runs those chosen, after the inputs.
    small = {
        "ILSVRC_TRAIN_SHARDS": "8",
        "ILSVRC_WEBDATASET_TRAIN_SHARDS": "3",
        "ILSVRC_DATA_DIR": str(tmp_path),
    }
    only_tf = build_definitions(load(small))
    assert {"train_webdataset", "webdataset_manifest"} <= {
        key.to_user_string() for key in only_tf.resolve_asset_graph().get_all_asset_keys()
    }
    assert [job for job, _ in _stages(only_tf)] == [
        "prepare_inputs",
        "write_train_shards",
        "write_validation_shards",
        "check_dataset",
        "publish_tfrecords",
    ]
    stages = _stages(build_definitions(load({**small, "ILSVRC_FORMATS": "tfrecord,webdataset"})))
    assert [job for job, _ in stages][5:] == [
        "write_train_webdataset",
        "write_validation_webdataset",
        "check_webdataset",
        "publish_webdataset",
    ]
    assert stages[5][1]["dagster/asset_partition_range_end"] == "train-00002-of-00003"
    # The training ImageFolder tree comes last, after the manifests, whatever the order named.
    every = _stages(build_definitions(load({**small, "ILSVRC_FORMATS": "imagefolder,webdataset"})))
    assert [job for job, _ in every][3:] == [
        "check_dataset",
        "publish_tfrecords",
        "write_train_webdataset",
        "write_validation_webdataset",
        "check_webdataset",
        "publish_webdataset",
        "write_train_tree",
        "publish_train_tree",
    ]


def test_the_audit_covers_the_formats_built(tmp_path: Path) -> None:
    from ilsvrc_assets.definitions import JOB_NAMES

    def audited(environ: dict[str, str]) -> set[str]:
        job = build_definitions(
            settings_module.load({**environ, "ILSVRC_DATA_DIR": str(tmp_path)})
        ).resolve_job_def(JOB_NAMES["audit"])
        return {key.asset_key.to_user_string() for key in job.asset_layer.asset_graph.asset_check_keys}

    assert not {"webdataset_manifest", "train_tree"} & audited({}) and "dataset_manifest" in audited({})
    assert {"webdataset_manifest", "dataset_manifest"} <= audited({"ILSVRC_FORMATS": "webdataset"})
    assert "train_tree" in audited({"ILSVRC_FORMATS": "imagefolder"})
