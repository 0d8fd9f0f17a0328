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
    ],
)
def test_bad_settings_name_the_variable(environ, message):
    with pytest.raises(settings.SettingsError, match=message):
        settings.load(environ)
