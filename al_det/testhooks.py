"""Test-only pause points: let a test stop a real al-det process at a named point, for sure.

Fault-injection tests (SIGKILL or SIGTERM at a given moment of a real ``al-det`` process) must
not depend on polling or timing: under load a file may appear and be superseded before a
poller sees it. So the stages call :func:`pause_at` at a few named points; it does nothing
unless the environment variable ``AL_DET_TEST_PAUSE_AT`` names that point, which no normal run
sets. Then the process prints one marker line to stderr (``al-det: test pause at POINT pid
N``) and waits: for a signal (SIGKILL, or SIGTERM whose handler ends the wait through
``until``) -- the test reads the marker, then signals the process. Reads and writes nothing.

Points (``K`` a cycle, ``I`` a 1-based iteration, ``C`` a chunk index):

* ``train:K:I``       after training iteration ``I`` of cycle ``K`` and its checkpoint, if any
  (rank 0 only; ``until`` is the SIGTERM flag, so a SIGTERM resumes training, which stops);
* ``infer:K:C``       after chunk ``C`` of cycle ``K``'s dump shards is written (its rank);
* ``evaluate:K``      after this rank's predictions on the test set, before anything is written;
* ``acquire:K``       after ``cycle_K/selection.json`` is written, before the next splits.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

ENV = "AL_DET_TEST_PAUSE_AT"
MARKER = "al-det: test pause at"
MAX_PAUSE_S = 900  # an orphaned paused process (its test crashed) exits after this
_POLL_S = 0.01  # how often a paused process looks at ``until``; a signal ends a sleep anyway


def pause_at(point: str, until: Callable[[], bool] | None = None) -> None:
    """Pause here if ``AL_DET_TEST_PAUSE_AT`` equals ``point`` (test-only; see the module doc).

    Waits until ``until()`` is true, or forever (until the process is killed) without one.
    """
    if os.environ.get(ENV) != point:
        return
    print(f"{MARKER} {point} pid {os.getpid()}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + MAX_PAUSE_S
    while until is None or not until():
        if time.monotonic() > deadline:  # the test died without ending us: do not linger
            print(f"{MARKER} {point}: nobody came in {MAX_PAUSE_S} s", file=sys.stderr, flush=True)
            os._exit(124)
        time.sleep(_POLL_S)
