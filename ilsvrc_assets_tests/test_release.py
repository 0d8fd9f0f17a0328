import hashlib

import pytest

from ilsvrc_assets import release


def test_shipped_reference_files_are_the_public_copies():
    expected = {
        "imagenet_lsvrc_2015_synsets.txt": "5ef135d00f8768c0f62853cd9dbc563d",
        "imagenet_2012_validation_synset_labels.txt": "eaa6788f6a51fca5fb184f235d0c4e62",
        "imagenet_metadata.txt": "80cb1e36867319076c17d6ec1a0bda31",
    }
    for name, md5 in expected.items():
        assert hashlib.md5(release.reference_path(name).read_bytes()).hexdigest() == md5


def test_label_facts():
    synsets = release.challenge_synsets()
    assert len(synsets) == release.NUM_SYNSETS == 1000
    assert list(synsets) == sorted(synsets)
    labels = release.tf_labels()
    assert labels["n01440764"] == 1 and labels["n15075141"] == 1000  # 1-based, 0 is background
    assert len(release.validation_synsets()) == release.NUM_VALIDATION_IMAGES
    assert release.validation_synsets()[0] == "n01751748"  # the first validation image is a sea snake
    assert release.synset_texts()["n01440764"] == "tench, Tinca tinca"
    assert len(release.cmyk_train_files()) == 22
    assert release.png_train_files() == {"n02105855_2933.JPEG"}


def test_shard_names():
    assert release.shard_name("train", 0, 1024) == "train-00000-of-01024"
    assert release.shard_names("validation", 128)[-1] == "validation-00127-of-00128"
    assert release.parse_shard_name("train-00003-of-01024") == ("train", 3, 1024)
    with pytest.raises(ValueError):
        release.shard_name("test", 0, 1)
    with pytest.raises(ValueError):
        release.parse_shard_name("train-3-1024")


def test_validation_names():
    assert release.validation_filename(293) == "ILSVRC2012_val_00000293.JPEG"
    assert release.validation_number("ILSVRC2012_val_00000293.JPEG") == 293
    for bad in ("ILSVRC2012_val_293.JPEG", "ILSVRC2012_val_00000293.jpg", "n01440764_1.JPEG"):
        with pytest.raises(ValueError):
            release.validation_number(bad)


def test_feature_keys_are_those_the_model_zoo_writes_in_its_order():
    # The feature dict of _convert_to_example in the model zoo's converter
    # (tensorflow/models research/inception/inception/data/build_imagenet_data.py), copied here
    # independently of the package: the records must be what its readers parse, and the order is
    # the one manifest.json lists them in.
    reference = [
        "image/height",
        "image/width",
        "image/colorspace",
        "image/channels",
        "image/class/label",
        "image/class/synset",
        "image/class/text",
        "image/object/bbox/xmin",
        "image/object/bbox/xmax",
        "image/object/bbox/ymin",
        "image/object/bbox/ymax",
        "image/object/bbox/label",
        "image/format",
        "image/filename",
        "image/encoded",
    ]
    assert list(release.FEATURE_KEYS) == reference
