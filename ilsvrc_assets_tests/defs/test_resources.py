"""The resource carries every setting to the assets, and nothing secret."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from dagster import build_resources

from ilsvrc_assets import settings as settings_module
from ilsvrc_assets.defs.resources import IlsvrcResource, resources_for
from ilsvrc_assets.settings import Settings

PASSWORD, TOKEN = "pw-9f1c2e7d-not-for-config", "tok-5b8a03c4-not-for-config"


def every_setting_changed(root: Path) -> dict[str, str]:
    """An environment that gives every field of Settings a value other than its default."""
    return {
        settings_module.ENV_SOURCE: "http",
        settings_module.ENV_DATA_DIR: str(root / "out"),
        settings_module.ENV_LOCAL_DIR: str(root / "archives"),
        settings_module.ENV_BOXES_DIR: str(root / "boxes"),
        settings_module.ENV_HTTP_URL: "https://example.org/ILSVRC/2012/",
        settings_module.ENV_SAMPLE_DIR: str(root / "sample"),
        settings_module.ENV_TRAIN_SHARDS: "16",
        settings_module.ENV_VALIDATION_SHARDS: "4",
        settings_module.ENV_WORKERS: "97",
        settings_module.ENV_REFRESH_CRON: "15 4 * * 1",
        settings_module.ENV_AUDIT_CRON: "30 6 * * *",
        settings_module.ENV_SCHEDULE_TIMEZONE: "Europe/Paris",
        settings_module.ENV_SCHEDULES: "running",
        settings_module.ENV_PARTITIONS_PER_RUN: "5",
        settings_module.ENV_FORMATS: "webdataset",
        settings_module.ENV_WEBDATASET_TRAIN_SHARDS: "8",
        settings_module.ENV_WEBDATASET_VALIDATION_SHARDS: "2",
        settings_module.ENV_KEEP_VERSIONS: "3",
        settings_module.ENV_AUDIT_DECODE_ALL: "1",
        settings_module.ENV_OUTPUT_URL: "gs://bucket/imagenet",
        settings_module.ENV_BUCKET_OUTPUTS: "tfrecords",
    }


@pytest.fixture
def changed(tmp_path, monkeypatch) -> Settings:
    monkeypatch.chdir(tmp_path)
    defaults = settings_module.load({})
    changed = settings_module.load(every_setting_changed(tmp_path))
    names = [f.name for f in dataclasses.fields(Settings)]
    same = [name for name in names if getattr(changed, name) == getattr(defaults, name)]
    # Otherwise a field the resource dropped (and rebuilt from its default) would go unnoticed.
    assert not same, f"set the variable of Settings.{', '.join(same)} in every_setting_changed()"
    return changed


def test_the_resource_has_a_field_for_every_setting():
    assert list(IlsvrcResource.model_fields) == [f.name for f in dataclasses.fields(Settings)]


def test_every_setting_round_trips_through_the_resource(changed):
    resource = IlsvrcResource.from_settings(changed)
    back = resource.settings()
    for field in dataclasses.fields(Settings):
        carried = getattr(back, field.name) == getattr(changed, field.name)
        assert carried, f"Settings.{field.name} is not carried"
    assert back == changed


def test_every_setting_round_trips_through_dagster_config(changed):
    # As a run gets it: the resource's config validated and processed by Dagster, then built again.
    with build_resources(resources_for(changed)) as resources:
        assert resources.ilsvrc.settings() == changed


def test_settings_round_trip_through_json(changed):
    assert settings_module.from_config(json.loads(json.dumps(settings_module.to_config(changed)))) == changed


def test_configuration_without_a_setting_names_it(changed):
    values = settings_module.to_config(changed)
    del values["audit_cron"]
    with pytest.raises(settings_module.SettingsError, match="audit_cron"):
        settings_module.from_config(values)


def test_credentials_stay_out_of_the_resource_config(tmp_path, monkeypatch):
    environ = {
        **every_setting_changed(tmp_path),
        settings_module.ENV_HTTP_USERNAME: "alice",
        settings_module.ENV_HTTP_PASSWORD: PASSWORD,
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    resource = resources_for()["ilsvrc"]
    config = json.dumps(resource.model_dump())
    assert PASSWORD not in config and TOKEN not in config
    source = resource.image_source()  # the credentials reach the source, read from the environment
    assert source.credentials.password == PASSWORD and PASSWORD not in repr(source.credentials)
    monkeypatch.setenv(settings_module.ENV_HTTP_TOKEN, TOKEN)
    assert resource.image_source().credentials.token == TOKEN
    assert TOKEN not in json.dumps(resource.model_dump())
