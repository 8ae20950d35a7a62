"""Per-item tables grown in place (`arrays.append_rows`, `arrays.load_table`): a grown version links the old file
and appends its rows, the old version keeps reading exactly its own rows, a file another version already grew is
copied instead, and a short or mislabelled table is refused by name. Pure, no server."""

from __future__ import annotations

import os

import numpy as np
import pytest

from widefunnel.arrays import append_rows, listed_rows, load_table, write_listed_rows
from widefunnel.layout import TABLE_ROWS


@pytest.fixture
def base(tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    (tmp_path / "v3").mkdir()
    table = np.arange(40, dtype=np.int32).reshape(10, 4)
    np.save(tmp_path / "v1" / "t.npy", table)
    return tmp_path, table


def test_a_grown_table_is_the_old_file_with_the_new_rows_and_the_old_version_reads_its_own(base):
    root, table = base
    tail = np.full((3, 4), 7, np.int32)
    written = append_rows(root / "v1" / "t.npy", root / "v2" / "t.npy", 10, tail)
    assert written == tail.nbytes
    assert os.stat(root / "v1" / "t.npy").st_ino == os.stat(root / "v2" / "t.npy").st_ino
    write_listed_rows(root / "v2", {"t.npy": 13})
    np.testing.assert_array_equal(load_table(root / "v2" / "t.npy"), np.concatenate([table, tail]))
    np.testing.assert_array_equal(load_table(root / "v1" / "t.npy"), table)  # its header's rows, as before
    np.testing.assert_array_equal(np.load(root / "v1" / "t.npy"), table)  # numpy itself reads the same
    assert listed_rows(root / "v1") == {} and listed_rows(root / "v2") == {"t.npy": 13}


def test_a_table_another_version_already_grew_is_copied_not_appended_to(base):
    root, table = base
    append_rows(root / "v1" / "t.npy", root / "v2" / "t.npy", 10, np.ones((3, 4), np.int32))
    other = np.full((2, 4), 9, np.int32)
    written = append_rows(root / "v1" / "t.npy", root / "v3" / "t.npy", 10, other)  # version 3 grows version 1 too
    assert os.stat(root / "v3" / "t.npy").st_ino != os.stat(root / "v1" / "t.npy").st_ino
    assert written == (10 + 2) * 16
    np.testing.assert_array_equal(load_table(root / "v3" / "t.npy"), np.concatenate([table, other]))
    write_listed_rows(root / "v2", {"t.npy": 13})
    np.testing.assert_array_equal(load_table(root / "v2" / "t.npy")[10:], np.ones((3, 4), np.int32))  # untouched


def test_a_short_file_a_bad_listing_and_a_wrong_row_shape_are_refused_by_name(base):
    root, _ = base
    with pytest.raises(ValueError, match=r"t\.npy: 12 rows need \d+ bytes, the file has \d+ \(truncated\?\)"):
        load_table(root / "v1" / "t.npy", 12)
    (root / "v1" / TABLE_ROWS).write_text('{"t.npy": "many"}')
    with pytest.raises(ValueError, match=r"table_rows\.json: an object of table file -> row count expected"):
        load_table(root / "v1" / "t.npy")
    with pytest.raises(ValueError, match=r"rows of shape \[4\], new rows \[3\]"):
        append_rows(root / "v1" / "t.npy", root / "v2" / "t.npy", 10, np.zeros((1, 3), np.int32))
    assert not (root / "v2" / "t.npy").exists()  # refused before anything was written


def test_codes_that_outgrow_a_narrow_table_widen_it_in_a_copy(tmp_path):
    (tmp_path / "v2").mkdir()
    np.save(tmp_path / "codes.npy", np.array([1, 255, 3], np.uint8))
    append_rows(tmp_path / "codes.npy", tmp_path / "v2" / "codes.npy", 3, np.array([256, 2]))
    grown = load_table(tmp_path / "v2" / "codes.npy")
    assert grown.dtype == np.uint16 and grown.tolist() == [1, 255, 3, 256, 2]
    assert os.stat(tmp_path / "codes.npy").st_ino != os.stat(tmp_path / "v2" / "codes.npy").st_ino
    assert load_table(tmp_path / "codes.npy").tolist() == [1, 255, 3]
