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


def test_contact_sheet_draws_the_dumps_xywh_boxes_where_they_are(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from al_det.dump import read_dump, write_dump
    from al_det.report.sheet import _draw_image

    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}]
    write_dump(tmp_path / "d", images, [{"id": 5, "name": "cat"}], [0, 1],
               np.array([[10, 20, 30, 8]], np.float32), [0.9], [5], np.zeros((1, 2)))
    fig, ax = plt.subplots()
    _draw_image(ax, str(tmp_path), read_dump(tmp_path / "d"), 0, {5: "cat"})
    (rect,) = ax.patches
    assert rect.get_xy() == (10, 20) and (rect.get_width(), rect.get_height()) == (30, 8)
    assert [t.get_text() for t in ax.texts][-1] == "cat 0.90"  # after "a.png not readable"
    plt.close(fig)
