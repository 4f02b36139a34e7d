"""``al-det report``: a comparison of work dirs as ``report.md`` with PNG figures and CSV
tables beside it (see :func:`al_det.report.write.write_report`)."""

from __future__ import annotations

from al_det.report.write import write_report

__all__ = ["write_report"]
