"""``learning_loss``: the top-b candidates by the predicted loss of ``loss_pred.npy``
(Learning Loss, Yoo and Kweon 2019; docs/acquisition.md). Reads that array only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import AcquireError
from .base import Picked, Pool, Strategy
from .entropy import ranked


@dataclass(frozen=True)
class LearningLoss(Strategy):
    """Rank by predicted loss, largest first; ties keep the dump's row order. No parameters."""

    reads = ("loss_pred",)

    def select(self, pool: Pool) -> Picked:
        dump = pool.dump
        if dump.loss_pred is None:
            raise AcquireError(f"{dump.path}: strategy 'learning_loss' needs loss_pred.npy in "
                               "the dump (each image's predicted loss); train with "
                               "model.loss_prediction.enabled: true and rerun `al-det infer`, "
                               "or write loss_pred.npy from your own loss-prediction module")
        keys = np.asarray(dump.loss_pred[pool.cand_rows], dtype=np.float64)
        return ranked(keys, pool.budget)
