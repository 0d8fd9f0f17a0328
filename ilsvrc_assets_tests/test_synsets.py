import io
import tarfile

import numpy as np
import pytest
import scipy.io

from ilsvrc_assets import release, synsets
from ilsvrc_assets.synsets import DevkitError


@pytest.fixture(scope="module")
def devkit(sample_release):
    return synsets.read_devkit(sample_release / release.DEVKIT.name)


def test_devkit_leaves_and_ground_truth(devkit):
    assert devkit.num_nodes == release.NUM_HIERARCHY_NODES
    assert len(devkit.leaves) == 1000 and len(devkit.ground_truth) == 50000


def test_synset_table_has_both_numberings(devkit):
    table = synsets.synset_table(devkit)
    assert synsets.synset_problems(table) == []
    assert list(table["wnid"]) == list(release.challenge_synsets())
    assert list(table["label"]) == list(range(1, 1001))
    by_wnid = table.set_index("wnid")
    assert by_wnid.loc["n01440764", "text"] == "tench, Tinca tinca"
    # The devkit IDs are a different order from the sorted WNIDs.
    assert list(table["ilsvrc2012_id"]) != list(range(1, 1001))


def test_validation_labels_map_devkit_ids_to_wnids(devkit):
    labels = synsets.validation_labels(devkit, synsets.synset_table(devkit))
    assert labels[0] == "n01751748"  # sea snake, as the facts sheet says
    assert synsets.validation_label_problems(labels) == []
    labels[9] = "n01440764" if labels[9] != "n01440764" else "n01443537"
    problems = synsets.validation_label_problems(labels)
    assert len(problems) == 1 and release.validation_filename(10) in problems[0]


def test_synset_problems_are_specific(devkit):
    table = synsets.synset_table(devkit)
    short = table.iloc[:-1]
    assert any("999 leaf synsets" in p for p in synsets.synset_problems(short))
    changed = table.copy()
    changed.loc[0, "wnid"] = "n99999999"
    assert any("n99999999" in p for p in synsets.synset_problems(changed))


def _devkit_with(tmp_path, members):
    path = tmp_path / release.DEVKIT.name
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_damaged_devkits_are_named(tmp_path):
    with pytest.raises(DevkitError, match="meta.mat is missing"):
        synsets.read_devkit(_devkit_with(tmp_path, {release.DEVKIT_VALIDATION_GROUND_TRUTH: b"1\n"}))
    with pytest.raises(DevkitError, match="not a readable MATLAB file"):
        synsets.read_devkit(
            _devkit_with(
                tmp_path, {release.DEVKIT_META_MAT: b"junk", release.DEVKIT_VALIDATION_GROUND_TRUTH: b"1\n"}
            )
        )
    mat = io.BytesIO()
    scipy.io.savemat(mat, {"synsets": np.zeros((2, 1), dtype=[("WNID", object)])})
    with pytest.raises(DevkitError, match="lacks the field"):
        synsets.read_devkit(
            _devkit_with(
                tmp_path,
                {release.DEVKIT_META_MAT: mat.getvalue(), release.DEVKIT_VALIDATION_GROUND_TRUTH: b"1\n"},
            )
        )
    path = tmp_path / "broken.tar.gz"
    path.write_bytes(b"\x1f\x8b\x08not gzip")
    with pytest.raises(DevkitError, match="broken.tar.gz"):
        synsets.read_devkit(path)
    with pytest.raises(DevkitError, match="line 2"):
        synsets.parse_ground_truth(b"1\nx\n", "gt")


# --- A copy without the devkit: its facts from the shipped reference files -------------------


def test_reference_devkit_gives_the_sample_devkits_synset_table_but_the_ids(devkit):
    # The ILSVRC2012_IDs exist only in meta.mat (a third order, not derivable): a copy without the
    # devkit gets every other column of the table, the IDs left empty, and the same labels.
    words = dict(zip(devkit.leaves["wnid"], devkit.leaves["words"]))
    made = synsets.reference_devkit(words, "LOC_synset_mapping.txt", list(release.validation_synsets()), "x")
    official = synsets.synset_table(devkit)
    table = synsets.synset_table(made)
    assert table["ilsvrc2012_id"].isna().all() and not official["ilsvrc2012_id"].isna().any()
    others = [c for c in synsets.SYNSET_COLUMNS if c != "ilsvrc2012_id"]
    assert table[others].equals(official[others])
    assert synsets.validation_labels(made, made.leaves) == synsets.validation_labels(devkit, devkit.leaves)
    assert made.num_nodes == devkit.num_nodes and "LOC_synset_mapping.txt" in made.origin
    assert synsets.synset_problems(table) == []  # no IDs is not a problem; wrong ones would be
    fallback = synsets.reference_devkit(None, "", None, "")  # imagenet_metadata.txt, shipped labels
    assert synsets.synset_table(fallback)[others].equals(official[others])


def test_reference_devkit_refuses_a_class_list_or_label_it_does_not_know():
    words = {w: w for w in release.challenge_synsets()}
    del words["n01440764"]
    words["n99999999"] = "not a challenge synset"
    with pytest.raises(DevkitError, match=r"mapping\.txt: lists 1,000.*n99999999.*missing: n01440764"):
        synsets.reference_devkit(words, "mapping.txt", None, "")
    labels = list(release.validation_synsets())
    labels[4] = "n99999999"
    with pytest.raises(DevkitError, match=r"val\.csv: ILSVRC2012_val_00000005\.JPEG is labelled 'n99999999'"):
        synsets.reference_devkit(None, "", labels, "val.csv")
