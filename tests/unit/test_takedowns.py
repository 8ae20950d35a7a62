"""Takedowns as pure functions: the file, its ids, the watch that serving steps keep, and the row bitmap."""

from __future__ import annotations

import numpy as np
import pytest

from widefunnel import takedowns as td
from widefunnel.ann.filters import StandingBlock, blocked_bits, restrict, unpack_rows
from widefunnel.validation import RequestError, refuse_taken_down

CATALOGUE = np.arange(1, 101, dtype=np.int64)


def test_take_down_restore_and_list(tmp_path):
    assert td.read_takedowns(tmp_path) == {}
    assert td.take_down(tmp_path, [5, 7], CATALOGUE, "rights expired") == [5, 7]
    assert td.take_down(tmp_path, [7, 9], CATALOGUE) == [9]  # 7 was already down
    entries = td.read_takedowns(tmp_path)
    assert sorted(entries) == [5, 7, 9] and entries[5]["reason"] == "rights expired"
    assert td.restore(tmp_path, [7]) == [7]
    assert sorted(td.read_takedowns(tmp_path)) == [5, 9]
    with pytest.raises(td.TakedownError, match=r"item ids \[7\] are not taken down"):
        td.restore(tmp_path, [7])
    with pytest.raises(td.TakedownError, match=r"item ids \[1000\] are not in the catalogue"):
        td.take_down(tmp_path, [3, 1000], CATALOGUE)
    assert sorted(td.read_takedowns(tmp_path)) == [5, 9]  # a refused call changes nothing


def test_id_files_name_the_bad_line():
    assert td.parse_ids("1\n2, 3  # comment\n\n# all comment\n4 5", "ids.txt") == [1, 2, 3, 4, 5]
    with pytest.raises(td.TakedownError, match=r"ids.txt, line 2: 'x7' is not an item id"):
        td.parse_ids("1\nx7", "ids.txt")
    with pytest.raises(td.TakedownError, match=r"ids.txt, line 1: '-3' is not an item id"):
        td.parse_ids("-3", "ids.txt")
    with pytest.raises(td.TakedownError, match=r"ids.txt, line 1: item ids are >= 1, got 0"):
        td.parse_ids("000", "ids.txt")


@pytest.mark.parametrize("text", ["1_0", "\uff11\uff10", "\u00b9", "\u0661", "+5", "-5", " ", "1e3", "0x1f",
                                  "1" * 19, "x" * 10_000])
def test_item_ids_are_ascii_digits_only(text):
    with pytest.raises(td.TakedownError, match=r"^IDS, line 2: .* is not an item id") as info:
        td.parse_item_id(text, "IDS, line 2")
    assert len(str(info.value)) < 160  # a long token is quoted cut, not whole


def test_item_ids_as_a_database_reads_them():
    assert [td.parse_item_id(t, "x") for t in ("1", "007", "10", "9" * 18)] == [1, 7, 10, int("9" * 18)]
    assert td.parse_ids("1, 2\n3", "f") == [1, 2, 3]


def test_an_id_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_bytes(b"1\n2, 3\n4 \xff5\n")
    with pytest.raises(td.TakedownError, match=r"ids.txt, line 3: not UTF-8 \(byte 0xff at column 3\)"):
        td.read_ids_file(path)
    path.write_bytes("1\n\uff12\n".encode())  # valid UTF-8, not an id
    with pytest.raises(td.TakedownError, match=r"ids.txt, line 2: '\uff12' is not an item id"):
        td.read_ids_file(path)


def test_a_corrupt_file_is_refused_and_the_watch_keeps_the_last_good_list(tmp_path):
    watch = td.TakedownWatch(tmp_path)
    assert watch.ids().size == 0
    td.take_down(tmp_path, [4], CATALOGUE)
    first = watch.ids()
    assert first.tolist() == [4] and watch.ids() is first  # no re-read while unchanged
    (tmp_path / "takedowns.json").write_text("{not json")
    assert watch.ids().tolist() == [4] and "not a takedown file" in watch.error
    with pytest.raises(td.TakedownError):
        td.read_takedowns(tmp_path)
    (tmp_path / "takedowns.json").unlink()
    assert watch.ids().size == 0


def test_blocked_rows_never_admissible_and_cached_per_list():
    assert blocked_bits(10, np.array([-1])) is None
    keep = blocked_bits(130, np.array([0, 64, 129, -1]))
    rows = unpack_rows(keep, 130)[0]
    assert not rows[[0, 64, 129]].any() and rows.sum() == 127
    request = np.zeros((2, keep.shape[1]), np.uint64)
    request[1] = keep[0]  # seed 1 admits everything but the blocked rows
    assert (restrict(request, keep, 2) == request & keep).all()
    assert restrict(None, keep, 3).shape == (3, keep.shape[1]) and restrict(request, None, 2) is request
    ids = [np.array([11, 12])]
    block = StandingBlock(lambda: ids[0], 5, lambda x: x - 10)
    first = block.bits()
    assert block.bits() is first and unpack_rows(first, 5)[0].tolist() == [True, False, False, True, True]
    ids[0] = np.zeros(0, np.int64)
    assert block.bits() is None


def test_a_taken_down_seed_or_candidate_is_refused_by_name():
    refuse_taken_down("seed_item_id", np.array([[1], [2]]), np.zeros(0, np.int64))
    with pytest.raises(RequestError, match=r"seed_item_id: item id\(s\) \[2\] are taken down"):
        refuse_taken_down("seed_item_id", np.array([[1], [2]]), np.array([2, 3]))
    with pytest.raises(RequestError, match=r"candidate_item_id: item id\(s\) \[3\]"):
        refuse_taken_down("candidate_item_id", np.array([[3, 3, 4]]), np.array([2, 3]))


def test_items_remove_also_updates_a_sharded_deployment_and_restore_clears_it(tmp_path, capsys):
    from widefunnel.cli import main

    source, router, shard = tmp_path / "source", tmp_path / "router", tmp_path / "shard-0"
    (source / "preprocess" / "1").mkdir(parents=True)
    np.save(source / "preprocess" / "1" / "catalogue.npy", np.arange(1, 20, dtype=np.int64))
    also = ["--also", str(router), str(shard)]
    router.mkdir()
    shard.mkdir()
    assert main(["items", "remove", "3", "7", "--repository", str(source), *also]) == 0
    for repo in (source, router, shard):
        assert sorted(td.read_takedowns(repo)) == [3, 7]
    assert main(["items", "restore", "3", "--repository", str(source), *also]) == 0
    for repo in (router, shard):
        assert sorted(td.read_takedowns(repo)) == [7]
    assert main(["items", "remove", "x1", "--repository", str(source)]) == 2
    assert "IDS, line 1: 'x1' is not an item id" in capsys.readouterr().err
    assert main(["items", "remove", "1_0", "--repository", str(source)]) == 2  # not item 10
    assert "IDS, line 1: '1_0' is not an item id" in capsys.readouterr().err
    assert sorted(td.read_takedowns(source)) == [7]
    td.restore(source, [7])
    td.publish(source, [router])
    assert td.read_takedowns(router) == {}
