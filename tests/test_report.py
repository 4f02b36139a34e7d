"""`al-det report`: its errors (the figures and tables: tests/test_sweep.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from al_det.cli import main


def test_report_of_a_folder_without_workdirs_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "no al-det work dir in it" in result.output


def test_report_needs_a_path() -> None:
    result = CliRunner().invoke(main, ["report"])
    assert result.exit_code == 2 and "name at least one work dir" in result.output


def test_report_without_matplotlib_is_one_line(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert 'pip install "al-det[plot]"' in result.output
