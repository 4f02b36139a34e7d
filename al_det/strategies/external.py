"""``external``: the top-b candidates by a per-image score the user supplies
(docs/acquisition.md): any scorer (MI-AOD's, PPAL's, ...) plugs into the loop this way.

Reads ``scores``, a CSV file with the header ``image_id,score`` and one row per candidate;
writes nothing. Rejected, naming the file and the line: a header other than that, a row
without exactly two fields, a score that is not a number or not finite, an image id that is
repeated, not in the dump, or of a labeled image; and, naming the first, any candidate
without a score. Image ids are matched as text against the dump's (``12`` is image 12).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import AcquireError
from .base import Picked, Pool, Strategy
from .entropy import ranked

HEADER = ["image_id", "score"]


@dataclass(frozen=True)
class External(Strategy):
    """Rank by the user's scores, largest first; ties keep the dump's row order."""


    scores: str | None = None

    def __post_init__(self) -> None:
        if self.scores is None:
            raise AcquireError("acquire.scores: strategy 'external' needs a CSV file of "
                               "per-image scores (header image_id,score): "
                               "--set acquire.scores=FILE.csv")
        if not isinstance(self.scores, (str, Path)) or not str(self.scores).strip():
            raise AcquireError(f"acquire.scores: must be the path of a CSV file, "
                               f"got {self.scores!r}")
        read_scores(Path(self.scores))  # the file's own rules, before any dump is read

    def select(self, pool: Pool) -> Picked:
        path = Path(self.scores)
        table = read_scores(path)
        ids = pool.dump.image_ids
        row_of = {str(iid): r for r, iid in enumerate(ids)}
        cand_of = {int(r): x for x, r in enumerate(pool.cand_rows)}
        keys = np.full(len(pool.cand_rows), np.nan)
        for token, (line, score) in table.items():
            r = row_of.get(token)
            if r is None:
                raise AcquireError(f"{path}: line {line}: image id {token!r} is not an image "
                                   f"of the dump {pool.dump.path}")
            x = cand_of.get(r)
            if x is None:
                raise AcquireError(f"{path}: line {line}: image {token!r} is in the labeled "
                                   "set, not a candidate; score only the candidates")
            keys[x] = score
        unscored = np.flatnonzero(np.isnan(keys))
        if len(unscored):
            first = ids[int(pool.cand_rows[unscored[0]])]
            raise AcquireError(f"{path}: no score for candidate image {first!r} (and "
                               f"{len(unscored) - 1} more); give one row per candidate")
        return ranked(keys, pool.budget)


def read_scores(path: Path) -> dict[str, tuple[int, float]]:
    """``image_id`` (as text, stripped) -> (line number, score) of the CSV file ``path``."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise AcquireError(f"{path}: scores file not found (acquire.scores)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise AcquireError(f"{path}: cannot read the scores file ({exc})") from exc
    out: dict[str, tuple[int, float]] = {}
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != HEADER:
        raise AcquireError(f"{path}: line 1: the header must be 'image_id,score', got "
                           f"{','.join(header or [])!r}")
    for fields in reader:
        line = reader.line_num
        if not fields or not "".join(fields).strip():
            continue  # blank line
        if len(fields) != 2:
            raise AcquireError(f"{path}: line {line}: expected 2 fields (image_id,score), got "
                               f"{len(fields)}")
        token, raw = fields[0].strip(), fields[1].strip()
        if not token:
            raise AcquireError(f"{path}: line {line}: empty image id")
        try:
            score = float(raw)
        except ValueError:
            raise AcquireError(f"{path}: line {line}: score {raw!r} of image {token!r} is not "
                               "a number") from None
        if not math.isfinite(score):
            raise AcquireError(f"{path}: line {line}: score of image {token!r} is {raw}; "
                               "scores must be finite")
        if token in out:
            raise AcquireError(f"{path}: line {line}: image id {token!r} repeated (first on "
                               f"line {out[token][0]}); give one row per candidate")
        out[token] = (line, score)
    return out
