"""`al-det report`: the AP curve from summary.csv as a PNG."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from al_det.cli import main
from al_det.metrics import COCO_METRICS as METRICS
from al_det.summary import update_summary


def test_report_writes_png(tmp_path: Path) -> None:
    for k, n in enumerate((60, 100, 140)):
        update_summary(tmp_path / "summary.csv", {"cycle": k, "labeled_images": n,
                                                  "labeled_fraction": n / 300,
                                                  **dict.fromkeys(METRICS, 0.1 * k)})
    result = CliRunner().invoke(main, ["report", "-w", str(tmp_path)])
    assert result.exit_code == 0, result.output
    png = tmp_path / "curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_report_without_summary_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["report", "-w", str(tmp_path)])
    assert result.exit_code == 2 and "summary.csv: missing" in result.output
