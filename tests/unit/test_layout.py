"""The repository layout's one owner (widefunnel/layout.py): versions, staging, build records, fingerprints."""

from __future__ import annotations

import pytest

from widefunnel import layout


def test_fingerprints_round_trip_and_malformed_entries_are_named():
    assert layout.parse_fingerprints("2=def; 1=abc;") == {"2": "def", "1": "abc"}
    assert layout.format_fingerprints({"10": "x", "2": "y", "1": "z"}) == "1=z;2=y;10=x"
    assert layout.format_fingerprints({"1": "a", "2": "b"}, keep={2}) == "2=b"
    for bad in ("1", "a=b", "1=", "=x"):
        with pytest.raises(ValueError, match="tower_fingerprints: malformed entry"):
            layout.parse_fingerprints(bad)


def test_versions_are_numbered_folders_and_staging_is_invisible_until_committed(tmp_path):
    model = tmp_path / "ann_engagement"
    staged = layout.stage_version(model, 3)
    assert layout.versions(model) == []  # ".3.partial" is not a version
    (staged / "x").write_text("1")
    layout.commit_version(staged, 3)
    assert layout.versions(model) == [3] and (model / "3" / "x").read_text() == "1"
    with pytest.raises(FileExistsError, match="immutable"):
        layout.commit_version(layout.stage_version(model, 3), 3)
    (tmp_path / "preprocess" / "2").mkdir(parents=True)
    (tmp_path / "preprocess" / "3").mkdir(parents=True)
    assert layout.complete_versions(tmp_path, ["ann_engagement", "preprocess"]) == [3]
    assert layout.next_version(tmp_path, ["ann_engagement", "preprocess"]) == 4
    layout.prune_versions(tmp_path / "preprocess", {3})
    assert layout.versions(tmp_path / "preprocess") == [3]


def test_atomic_write_leaves_an_unchanged_file_alone_and_builds_are_recorded(tmp_path):
    path = tmp_path / "m" / "config.pbtxt"
    layout.atomic_write(path, "a")
    before = path.stat().st_mtime_ns
    layout.atomic_write(path, "a")
    assert path.stat().st_mtime_ns == before  # Triton would reload a model whose folder changed
    layout.atomic_write(path, "b")
    assert path.read_text() == "b" and not list(path.parent.glob(".*tmp"))
    layout.record_build(tmp_path, 1, "abc", "cpu")
    layout.record_build(tmp_path, 2, "def", "gpu")
    assert layout.build_fingerprint(tmp_path, 2) == "def" and layout.build_fingerprint(tmp_path, 9) is None


def test_plugin_files_are_found_as_package_data():
    for name in ("preprocess", "quota_merge", "onnxruntime", "widefunnel_ann", "ann_router"):
        assert layout.plugin_file(name).is_file(), name


@pytest.mark.parametrize("on_disk, keep, served, kept", [
    ([1, 2, 3], 2, None, {2, 3}),
    ([1, 2, 3], 2, 1, {1, 2, 3}),  # two builds since the served one, no swap: it stays
    ([1, 2, 3, 4], 2, 1, {1, 3, 4}),
    ([1, 2, 3, 4], 2, 4, {3, 4}),
    ([1, 2, 3, 4, 5], 2, 3, {2, 3, 4, 5}),  # served and the build its rollback goes to
    ([2, 3], 2, 1, {2, 3}),  # a record of a version no longer on disk keeps nothing extra
])
def test_a_prune_keeps_the_newest_the_served_and_its_rollback(on_disk, keep, served, kept):
    assert layout.versions_to_keep(on_disk, keep, served) == kept


def test_the_served_version_is_the_newest_record(tmp_path):
    assert layout.served_version(tmp_path) is None
    layout.record_build(tmp_path, 1, "aa", "cpu")
    layout.record_build(tmp_path, 2, "bb", "cpu")
    layout.record_served(tmp_path, 2)
    layout.record_served(tmp_path, 1)  # a rollback
    assert layout.served_version(tmp_path) == 1
    assert layout.build_fingerprint(tmp_path, 1) == "aa"  # the record keeps the build's facts


def test_builds_written_without_a_swap_never_prune_the_served_version(tmp_path):
    from widefunnel import model_configs as mcfg
    from widefunnel.builders.repository import prune_versions

    for model in mcfg.STEP_MODELS:
        for v in (1, 2, 3, 4):
            (tmp_path / model / str(v)).mkdir(parents=True)
    layout.record_served(tmp_path, 1)
    prune_versions(tmp_path, 2)
    assert layout.complete_versions(tmp_path, mcfg.STEP_MODELS) == [1, 3, 4]
    layout.record_served(tmp_path, 4)  # swapped to 4: 1 may go now, 3 is its rollback
    prune_versions(tmp_path, 2)
    assert layout.complete_versions(tmp_path, mcfg.STEP_MODELS) == [3, 4]
