"""Atomic writes (vitlab.files): a file is its old self or completely new, never half-written."""

import os
import stat

import pytest

from vitlab.files import atomic_path, write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer died")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_new_files_get_the_mode_a_plain_open_would_give(tmp_path):
    path = write_text(tmp_path / "sub" / "b.txt", "x")  # parents are made
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
