"""Where things go and how many of them: settings read from environment variables.

Every setting has a documented environment variable and a default that needs nothing set, so a
fresh clone runs on the built-in sample. The Dagster layer and the CLI both read them from here;
the Dagster resource carries every field of :class:`Settings` in the plain form
:func:`to_config` gives and :func:`from_config` reads back.

Every environment variable the project reads is named once, below (``ENV_...``). The HTTP
credentials are read by ``download.Credentials.from_env`` only, never kept in :class:`Settings`:
the settings become run configuration, which Dagster stores.
"""

from __future__ import annotations

import os
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from ilsvrc_assets import release

ENV_SOURCE = "ILSVRC_SOURCE"  # sample | local | http | kaggle | folder (README, "Sources")
ENV_DATA_DIR = "ILSVRC_DATA_DIR"  # outputs; default ./data
ENV_LOCAL_DIR = "ILSVRC_LOCAL_DIR"  # folder holding the copy (source=local: the official archives)
# A folder holding the official box archives, for a copy without boxes (e.g. source=folder).
ENV_BOXES_DIR = "ILSVRC_BOXES_DIR"
ENV_HTTP_URL = "ILSVRC_HTTP_URL"  # base URL of the archives (source=http)
# Credentials for the HTTP source (basic auth, or a bearer token): read by
# download.Credentials.from_env when the source is made, never part of the settings.
ENV_HTTP_USERNAME = "ILSVRC_HTTP_USERNAME"
ENV_HTTP_PASSWORD = "ILSVRC_HTTP_PASSWORD"
ENV_HTTP_TOKEN = "ILSVRC_HTTP_TOKEN"
ENV_SAMPLE_DIR = "ILSVRC_SAMPLE_DIR"  # where the built-in sample is generated; default <data>/sample
ENV_TRAIN_SHARDS = "ILSVRC_TRAIN_SHARDS"  # default 1024
ENV_VALIDATION_SHARDS = "ILSVRC_VALIDATION_SHARDS"  # default 128
ENV_WEBDATASET_TRAIN_SHARDS = "ILSVRC_WEBDATASET_TRAIN_SHARDS"  # default 1024
ENV_WEBDATASET_VALIDATION_SHARDS = "ILSVRC_WEBDATASET_VALIDATION_SHARDS"  # default 64
ENV_FORMATS = "ILSVRC_FORMATS"  # what `ilsvrc-assets build` writes: tfrecord,webdataset,imagefolder
ENV_WORKERS = "ILSVRC_WORKERS"  # processes for shard writing and checking; default: cores
ENV_PARTITIONS_PER_RUN = "ILSVRC_PARTITIONS_PER_RUN"  # shards per backfill run; default: all in one
# Published versions of each output kept (the current one included); default 1 (versions.publish).
ENV_KEEP_VERSIONS = "ILSVRC_KEEP_VERSIONS"
# 1: the audit decodes every image it reads back, not only the fixed sample (manifest.dataset_verdicts).
ENV_AUDIT_DECODE_ALL = "ILSVRC_AUDIT_DECODE_ALL"
# gs://bucket/prefix or s3://bucket/prefix: the published outputs also go there (ilsvrc_assets.bucket);
# the credentials come from each vendor's standard chain, never from here.
ENV_OUTPUT_URL = "ILSVRC_OUTPUT_URL"
# Which published outputs go there (comma-separated names of OUTPUT_NAMES); default all of them.
ENV_BUCKET_OUTPUTS = "ILSVRC_BUCKET_OUTPUTS"
# Where files on their way to or from a bucket are staged (storage.objects.scratch_dir); default: the
# system's temporary folder. Read where it is used: a working folder, not an output's place.
ENV_SCRATCH_DIR = "ILSVRC_SCRATCH_DIR"
ENV_DAGSTER_HOME = "DAGSTER_HOME"  # the Dagster instance's folder; the CLI's default ./.dagster_home
# Dagster's own: events of a partitioned step handed to the event log in batches (the CLI sets it).
ENV_DAGSTER_EVENT_BATCH_SIZE = "DAGSTER_EVENT_BATCH_SIZE"
ENV_REFRESH_CRON = "ILSVRC_REFRESH_CRON"  # when to look for changed archives; default weekly
ENV_AUDIT_CRON = "ILSVRC_AUDIT_CRON"  # when to re-check the outputs; default daily
ENV_SCHEDULE_TIMEZONE = "ILSVRC_SCHEDULE_TIMEZONE"  # of both crons; default UTC
ENV_SCHEDULES = "ILSVRC_SCHEDULES"  # running | stopped: their status until changed in the UI

DEFAULT_REFRESH_CRON = "0 3 * * 0"  # Sundays 03:00
DEFAULT_AUDIT_CRON = "0 5 * * *"  # every day 05:00
SCHEDULE_STATUSES = ("stopped", "running")

SOURCES = ("sample", "local", "http", "kaggle", "folder", "huggingface")
# The sources that read a copy where it is, in ILSVRC_LOCAL_DIR.
LOCAL_SOURCES = ("local", "kaggle", "folder")
# The outputs ILSVRC_FORMATS chooses from, in the order the build writes them: the record formats
# (ilsvrc_assets.formats) and the training ImageFolder tree (last: the whole training set again).
# The TFRecords are always written: the model zoo reads them.
FORMATS = ("tfrecord", "webdataset", "imagefolder")
DEFAULT_FORMATS = ("tfrecord",)
# The published outputs (versions.OUTPUTS), which ILSVRC_BUCKET_OUTPUTS chooses from.
OUTPUT_NAMES = ("validation_tree", "train_tree", "tfrecords", "webdataset")


class SettingsError(ValueError):
    """A setting has a value that cannot work; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one deployment."""

    source: str
    data_dir: Path
    local_dir: Path | None
    http_url: str | None
    sample_dir: Path
    num_shards: Mapping[str, int]
    workers: int
    refresh_cron: str = DEFAULT_REFRESH_CRON
    audit_cron: str = DEFAULT_AUDIT_CRON
    schedule_timezone: str = "UTC"
    schedules_running: bool = False
    # Shard partitions per run of a backfill; None: the whole range in one run.
    partitions_per_run: int | None = None
    # A folder holding the official box archives, for a source whose copy has no boxes.
    boxes_dir: Path | None = None
    # What `ilsvrc-assets build` writes (names of FORMATS, "tfrecord" first); every format's assets
    # are in the code location whatever this says.
    formats: tuple[str, ...] = DEFAULT_FORMATS
    # The WebDataset tars per split (their own count: the published WebDataset has 64 validation tars).
    webdataset_shards: Mapping[str, int] = field(
        default_factory=lambda: dict(release.DEFAULT_NUM_WEBDATASET_SHARDS)
    )
    # Published versions kept of each output, the current one included (older ones are removed when
    # a new one is published: ilsvrc_assets.versions).
    keep_versions: int = 1
    # Whether the audit decodes every image of the shards it reads back (otherwise the fixed sample,
    # when the archives are the official ones: shard_scan.SAMPLE).
    audit_decode_all: bool = False
    # Where the published outputs also go, under the same relative paths as under data_dir
    # (``gs://bucket/prefix`` or ``s3://bucket/prefix``, no trailing slash); None: local only.
    output_url: str | None = None
    # The published outputs that go to output_url (a TPU user may want the TFRecords only).
    bucket_outputs: tuple[str, ...] = OUTPUT_NAMES

    # Output layout under data_dir, in one place.
    @property
    def synsets_csv(self) -> Path:
        return self.data_dir / "synsets.csv"

    @property
    def validation_labels_csv(self) -> Path:
        return self.data_dir / "validation_labels.csv"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    def image_index(self, split: str) -> Path:
        return self.index_dir / f"{split}_images.parquet"

    @property
    def validation_dir(self) -> Path:
        return self.data_dir / "validation"

    @property
    def train_dir(self) -> Path:
        """The training ImageFolder tree (opt-in: ``train_tree``)."""
        return self.data_dir / "train"

    @property
    def bounding_boxes_parquet(self) -> Path:
        return self.data_dir / "bounding_boxes.parquet"

    @property
    def bounding_boxes_csv(self) -> Path:
        # The reference pipeline's file name and format (training boxes).
        return self.data_dir / "imagenet_2012_bounding_boxes.csv"

    @property
    def validation_bounding_boxes_csv(self) -> Path:
        return self.data_dir / "imagenet_2012_validation_bounding_boxes.csv"

    @property
    def tfrecords_dir(self) -> Path:
        return self.data_dir / "tfrecords"

    @property
    def manifest_json(self) -> Path:
        return self.tfrecords_dir / "manifest.json"

    @property
    def download_dir(self) -> Path:
        return self.data_dir / "archives"

    @property
    def state_dir(self) -> Path:
        """Bookkeeping that lets a second run skip work already done (checksums, shard plans)."""
        return self.data_dir / ".state"

    @property
    def checksum_cache_json(self) -> Path:
        """The archives' MD5s, keyed by size and modification time (``archives.ChecksumCache``)."""
        return self.state_dir / "checksums.json"

    def lock_path(self, name: str) -> Path:
        """The lock file held while output ``name`` is written (``fileio.exclusive``)."""
        return self.state_dir / "locks" / f"{name}.lock"

    def shard_names(self, split: str, record_format: str = "tfrecord") -> list[str]:
        """The shards of ``split`` in ``record_format`` (a name of ``formats.FORMATS``), in order."""
        counts = {"tfrecord": self.num_shards, "webdataset": self.webdataset_shards}[record_format]
        return release.shard_names(split, counts[split])


def _flag_env(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise SettingsError(f"{name}={environ[name]!r}: expected 1 or 0 (true or false)")


def _int_env(environ: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def _cron_env(environ: Mapping[str, str], name: str, default: str) -> str:
    value = " ".join(environ.get(name, "").split()) or default
    if len(value.split(" ")) != 5:
        raise SettingsError(
            f"{name}={value!r} is not a cron expression of five fields (minute hour day month weekday), "
            f"e.g. {default!r}"
        )
    return value


def _schedule_env(environ: Mapping[str, str]) -> tuple[str, bool]:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    timezone = environ.get(ENV_SCHEDULE_TIMEZONE, "").strip() or "UTC"
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(
            f"{ENV_SCHEDULE_TIMEZONE}={timezone!r} is not a time zone name such as UTC or Europe/Paris"
        ) from None
    status = environ.get(ENV_SCHEDULES, "").strip().lower() or "stopped"
    if status not in SCHEDULE_STATUSES:
        raise SettingsError(f"{ENV_SCHEDULES}={status!r}: expected one of {', '.join(SCHEDULE_STATUSES)}")
    return timezone, status == "running"


OUTPUT_URL_SCHEMES = ("gs", "s3")


def _output_url_env(environ: Mapping[str, str]) -> str | None:
    text = environ.get(ENV_OUTPUT_URL, "").strip()
    if not text:
        return None
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in OUTPUT_URL_SCHEMES or not parts.netloc:
        raise SettingsError(
            f"{ENV_OUTPUT_URL}={text!r}: expected gs://bucket/prefix or s3://bucket/prefix (or unset: local only)"
        )
    if "@" in parts.netloc or parts.query or parts.fragment:
        # Everything in the settings becomes run configuration, which Dagster stores.
        raise SettingsError(
            f"{ENV_OUTPUT_URL}={parts.scheme}://{parts.netloc.rpartition('@')[2]}...: only the bucket and "
            "prefix belong here; the credentials come from the vendor's standard chain (application "
            "default credentials; AWS_* variables or profiles)"
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")


def _bucket_outputs_env(environ: Mapping[str, str]) -> tuple[str, ...]:
    text = environ.get(ENV_BUCKET_OUTPUTS, "").strip()
    if not text:
        return OUTPUT_NAMES
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if unknown := [name for name in names if name not in OUTPUT_NAMES]:
        raise SettingsError(
            f"{ENV_BUCKET_OUTPUTS}={text!r}: unknown output(s) {', '.join(unknown)}; "
            f"expected names of {', '.join(OUTPUT_NAMES)}"
        )
    return names


def _formats_env(environ: Mapping[str, str]) -> tuple[str, ...]:
    raw = environ.get(ENV_FORMATS, "")
    named = [name.strip().lower() for name in raw.split(",") if name.strip()]
    if unknown := [name for name in named if name not in FORMATS]:
        raise SettingsError(
            f"{ENV_FORMATS}={raw!r}: unknown format(s) {', '.join(unknown)}; expected a comma-separated "
            f"list of {', '.join(FORMATS)}"
        )
    # The TFRecords always: the model zoo reads them, and the other outputs are checked beside them.
    return tuple(name for name in FORMATS if name in {*DEFAULT_FORMATS, *named})


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve the settings from the environment (``os.environ`` by default)."""
    environ = os.environ if environ is None else environ
    source = environ.get(ENV_SOURCE, "sample").strip().lower() or "sample"
    if source not in SOURCES:
        raise SettingsError(f"{ENV_SOURCE}={source!r}: expected one of {', '.join(SOURCES)}")
    data_dir = Path(environ.get(ENV_DATA_DIR, "").strip() or "data").expanduser().absolute()
    local_dir = environ.get(ENV_LOCAL_DIR, "").strip()
    http_url = environ.get(ENV_HTTP_URL, "").strip()
    if source == "local" and not local_dir:
        raise SettingsError(
            f"{ENV_SOURCE}=local needs {ENV_LOCAL_DIR}: the folder holding "
            + ", ".join(a.name for a in release.ARCHIVES)
        )
    if source in LOCAL_SOURCES and not local_dir:
        raise SettingsError(
            f"{ENV_SOURCE}={source} needs {ENV_LOCAL_DIR}: the folder (or file) holding the copy"
        )
    if source == "huggingface" and not local_dir and not environ.get("HF_TOKEN", "").strip():
        # Only whether the token is set is looked at here: it is read by the source, never a setting.
        raise SettingsError(
            f"{ENV_SOURCE}=huggingface needs {ENV_LOCAL_DIR} (the folder holding data/*.tar.gz, or a hub "
            f"cache) or HF_TOKEN (to fetch the files from the hub)"
        )
    boxes_dir = environ.get(ENV_BOXES_DIR, "").strip()
    if source == "http" and not http_url:
        raise SettingsError(
            f"{ENV_SOURCE}=http needs {ENV_HTTP_URL}, e.g. https://image-net.org/data/ILSVRC/2012/"
        )
    if http_url and (parts := urllib.parse.urlsplit(http_url)).username is not None:
        # Everything in the settings becomes run configuration, which Dagster stores.
        bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        raise SettingsError(
            f"{ENV_HTTP_URL} holds credentials (user:password@...), which would be kept in the run "
            f"history: set {ENV_HTTP_USERNAME} and {ENV_HTTP_PASSWORD} (or {ENV_HTTP_TOKEN}) instead, "
            f"and {ENV_HTTP_URL}={bare}"
        )
    sample_dir = environ.get(ENV_SAMPLE_DIR, "").strip()
    timezone, schedules_running = _schedule_env(environ)
    return Settings(
        source=source,
        data_dir=data_dir,
        local_dir=Path(local_dir).expanduser().absolute() if local_dir else None,
        http_url=http_url or None,
        sample_dir=Path(sample_dir).expanduser().absolute() if sample_dir else data_dir / "sample",
        num_shards={
            "train": _int_env(environ, ENV_TRAIN_SHARDS, release.DEFAULT_NUM_SHARDS["train"]),
            "validation": _int_env(environ, ENV_VALIDATION_SHARDS, release.DEFAULT_NUM_SHARDS["validation"]),
        },
        workers=_int_env(environ, ENV_WORKERS, os.cpu_count() or 1),
        refresh_cron=_cron_env(environ, ENV_REFRESH_CRON, DEFAULT_REFRESH_CRON),
        audit_cron=_cron_env(environ, ENV_AUDIT_CRON, DEFAULT_AUDIT_CRON),
        schedule_timezone=timezone,
        schedules_running=schedules_running,
        # Unset gives 0 (no minimum is checked then): one run per backfill.
        partitions_per_run=_int_env(environ, ENV_PARTITIONS_PER_RUN, 0) or None,
        boxes_dir=Path(boxes_dir).expanduser().absolute() if boxes_dir else None,
        formats=_formats_env(environ),
        keep_versions=_int_env(environ, ENV_KEEP_VERSIONS, 1),
        audit_decode_all=_flag_env(environ, ENV_AUDIT_DECODE_ALL),
        output_url=_output_url_env(environ),
        bucket_outputs=_bucket_outputs_env(environ),
        webdataset_shards={
            "train": _int_env(
                environ, ENV_WEBDATASET_TRAIN_SHARDS, release.DEFAULT_NUM_WEBDATASET_SHARDS["train"]
            ),
            "validation": _int_env(
                environ, ENV_WEBDATASET_VALIDATION_SHARDS, release.DEFAULT_NUM_WEBDATASET_SHARDS["validation"]
            ),
        },
    )


# Settings as configuration (the Dagster resource's fields, run config, JSON): each type a field of
# Settings has, with the type it takes there and the conversions both ways. A field of another type
# makes config_types() raise, so a new setting cannot silently miss the resource.
ConfigValue = str | int | bool | dict[str, int] | list[str] | None


@dataclass(frozen=True)
class _ConfigForm:
    config_type: object  # the field's type in configuration
    to_config: Callable[[typing.Any], ConfigValue]
    from_config: Callable[[typing.Any], typing.Any]


def _same(value: typing.Any) -> typing.Any:
    return value


_CONFIG_FORMS: dict[object, _ConfigForm] = {
    str: _ConfigForm(str, _same, _same),
    int: _ConfigForm(int, _same, _same),
    bool: _ConfigForm(bool, _same, _same),
    str | None: _ConfigForm(str | None, _same, _same),
    int | None: _ConfigForm(int | None, _same, _same),
    Path: _ConfigForm(str, str, Path),
    Path | None: _ConfigForm(
        str | None,
        lambda path: None if path is None else str(path),
        lambda text: None if text is None else Path(text),
    ),
    Mapping[str, int]: _ConfigForm(dict[str, int], dict, dict),
    tuple[str, ...]: _ConfigForm(list[str], list, tuple),
}


def _forms() -> dict[str, _ConfigForm]:
    hints = typing.get_type_hints(Settings)
    forms = {}
    for each in fields(Settings):
        form = _CONFIG_FORMS.get(hints[each.name])
        if form is None:
            raise TypeError(
                f"Settings.{each.name}: no configuration form for {hints[each.name]}; add one to "
                f"settings._CONFIG_FORMS (its type in configuration and the conversions both ways)"
            )
        forms[each.name] = form
    return forms


def config_types() -> dict[str, object]:
    """{field name: its type in configuration} for every field of :class:`Settings`, in order."""
    return {name: form.config_type for name, form in _forms().items()}


def to_config(settings: Settings) -> dict[str, ConfigValue]:
    """Every field of ``settings`` in its configuration form (paths as strings, mappings as dicts)."""
    return {name: form.to_config(getattr(settings, name)) for name, form in _forms().items()}


def from_config(values: Mapping[str, typing.Any]) -> Settings:
    """The :class:`Settings` that :func:`to_config` gave ``values``; every field must be there."""
    forms = _forms()
    if missing := [name for name in forms if name not in values]:
        raise SettingsError(f"configuration without the setting(s) {', '.join(missing)}")
    return Settings(**{name: form.from_config(values[name]) for name, form in forms.items()})
