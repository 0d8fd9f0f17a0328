import pytest

from ilsvrc_assets import settings


def test_defaults_need_nothing_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = settings.load({})
    assert s.source == "sample"
    assert s.data_dir == tmp_path / "data"
    assert s.sample_dir == tmp_path / "data" / "sample"
    assert s.num_shards == {"train": 1024, "validation": 128}
    assert s.shard_names("validation")[0] == "validation-00000-of-00128"
    assert s.workers >= 1


def test_values_from_environment(tmp_path):
    s = settings.load(
        {
            "ILSVRC_SOURCE": "local",
            "ILSVRC_LOCAL_DIR": str(tmp_path),
            "ILSVRC_DATA_DIR": str(tmp_path / "out"),
            "ILSVRC_TRAIN_SHARDS": "16",
            "ILSVRC_VALIDATION_SHARDS": "2",
            "ILSVRC_WORKERS": "3",
        }
    )
    assert (s.source, s.local_dir, s.data_dir) == ("local", tmp_path, tmp_path / "out")
    assert s.num_shards == {"train": 16, "validation": 2} and s.workers == 3


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"ILSVRC_SOURCE": "ftp"}, "ILSVRC_SOURCE"),
        ({"ILSVRC_SOURCE": "local"}, "ILSVRC_LOCAL_DIR"),
        ({"ILSVRC_SOURCE": "http"}, "ILSVRC_HTTP_URL"),
        ({"ILSVRC_TRAIN_SHARDS": "many"}, "ILSVRC_TRAIN_SHARDS"),
        ({"ILSVRC_VALIDATION_SHARDS": "0"}, "ILSVRC_VALIDATION_SHARDS"),
        ({"ILSVRC_AUDIT_DECODE_ALL": "maybe"}, "ILSVRC_AUDIT_DECODE_ALL"),
        ({"ILSVRC_OUTPUT_URL": "https://example.org/data"}, "ILSVRC_OUTPUT_URL"),
        ({"ILSVRC_OUTPUT_URL": "gs:///no-bucket"}, "ILSVRC_OUTPUT_URL"),
        ({"ILSVRC_OUTPUT_URL": "s3://key:secret@bucket/x"}, "standard chain"),
        ({"ILSVRC_BUCKET_OUTPUTS": "tfrecords,shards"}, "ILSVRC_BUCKET_OUTPUTS"),
    ],
)
def test_bad_settings_name_the_variable(environ, message):
    with pytest.raises(settings.SettingsError, match=message) as raised:
        settings.load(environ)
    assert "secret" not in str(raised.value)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("", None),
        ("gs://bucket", "gs://bucket"),
        (" s3://bucket/imagenet/ ", "s3://bucket/imagenet"),
        ("gs://bucket/a/b", "gs://bucket/a/b"),
    ],
)
def test_output_url_is_a_bucket_and_prefix(raw, expected):
    assert settings.load({"ILSVRC_OUTPUT_URL": raw}).output_url == expected


@pytest.mark.parametrize("raw, expected", [("", None), ("4", 4), (" 1 ", 1)])
def test_partitions_per_run_sets_the_shard_backfill_batches(raw, expected):
    from dagster import BackfillPolicy

    from ilsvrc_assets.defs.shards import shards_asset

    s = settings.load({"ILSVRC_PARTITIONS_PER_RUN": raw, "ILSVRC_TRAIN_SHARDS": "8"})
    assert s.partitions_per_run == expected
    # Unset: a backfill writes the whole range in one run; set: in runs of that many shards.
    policy = BackfillPolicy.multi_run(expected) if expected else BackfillPolicy.single_run()
    assert shards_asset(s, "train_shards", "train").backfill_policy == policy


@pytest.mark.parametrize("raw", ["0", "-2", "four"])
def test_bad_partitions_per_run_names_the_variable(raw):
    with pytest.raises(settings.SettingsError, match="ILSVRC_PARTITIONS_PER_RUN"):
        settings.load({"ILSVRC_PARTITIONS_PER_RUN": raw})


def test_a_setting_without_a_configuration_form_is_refused_naming_it(monkeypatch):
    # A new Settings field of a type the resource cannot carry fails at import, not silently.
    forms = {t: f for t, f in settings._CONFIG_FORMS.items() if t is not settings.Path}
    monkeypatch.setattr(settings, "_CONFIG_FORMS", forms)
    with pytest.raises(TypeError, match="Settings.data_dir"):
        settings.config_types()


def test_bucket_outputs_are_the_published_outputs():
    from ilsvrc_assets import versions

    assert set(settings.OUTPUT_NAMES) == set(versions.OUTPUTS)
    assert settings.load({}).bucket_outputs == settings.OUTPUT_NAMES
    assert settings.load({"ILSVRC_BUCKET_OUTPUTS": " tfrecords , webdataset"}).bucket_outputs == (
        "tfrecords",
        "webdataset",
    )
