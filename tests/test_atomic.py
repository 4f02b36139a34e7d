"""Atomic writes: complete or absent, never partial; leftovers cleaned; usual permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from al_det import atomic


def test_write_replaces_only_when_complete(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    atomic.write_json(path, {"x": 1})
    with pytest.raises(RuntimeError), atomic.atomic_open(path) as fh:
        fh.write('{"x": 2')
        raise RuntimeError("killed mid-write")
    assert path.read_text() == '{"x": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "f.txt", "hi")
        with atomic.atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_atomic_dir_swaps_whole_folder(tmp_path: Path) -> None:
    out = tmp_path / "dump"
    with atomic.atomic_dir(out) as d:
        (d / "a").write_text("1")
    with pytest.raises(ValueError), atomic.atomic_dir(out) as d:
        (d / "b").write_text("2")
        raise ValueError
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    with atomic.atomic_dir(out) as d:
        (d / "c").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["c"]
    assert [p.name for p in tmp_path.iterdir()] == ["dump"]


def test_clean_tmp_removes_leftovers(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".tmp-model.pth.abc").write_text("partial")
    (tmp_path / ".tmp-dump.xyz").mkdir()
    (tmp_path / ".tmp-dump.xyz" / "f").write_text("partial")
    (tmp_path / "keep.json").write_text("{}")
    removed = atomic.clean_tmp(tmp_path)
    assert len(removed) == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["keep.json", "sub"]
