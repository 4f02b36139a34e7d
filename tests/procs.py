"""Real al-det processes for fault-injection tests, synchronised on what they print.

A test starts a process, waits for a line it prints (a ``testhooks`` pause marker, "ready"),
then signals it. Lines are read by threads into queues, so every wait has a timeout: a hung
process fails the test with its output instead of hanging the suite. No sleeps decide
anything here.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from al_det.testhooks import ENV as PAUSE_ENV
from al_det.testhooks import MARKER

REPO = Path(__file__).resolve().parents[1]


def al_det_cmd(*args: str, nproc: int = 1) -> list[str]:
    """``python -m al_det ARGS``, or the same under ``torchrun --standalone``."""
    if nproc == 1:
        return [sys.executable, "-m", "al_det", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(nproc), "-m", "al_det", *args]


def child_env(**extra: str) -> dict[str, str]:
    """This environment minus launcher variables, one thread per process (two cores shared)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_",
                                PAUSE_ENV))}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


class Proc:
    """A started process whose stdout and stderr lines are collected by threads."""

    def __init__(self, cmd: Sequence[str], env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.cmd = list(cmd)
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env if env is not None else child_env(),
                                     cwd=cwd, start_new_session=True)
        self.lines: dict[str, queue.Queue[str | None]] = {"out": queue.Queue(),
                                                           "err": queue.Queue()}
        self.seen: dict[str, list[str]] = {"out": [], "err": []}
        self._threads = [threading.Thread(target=self._pump, args=(pipe, name), daemon=True)
                         for pipe, name in ((self.proc.stdout, "out"), (self.proc.stderr, "err"))]
        for t in self._threads:
            t.start()

    def _pump(self, pipe, name: str) -> None:  # noqa: ANN001 - a text pipe
        for line in pipe:
            self.lines[name].put(line.rstrip("\n"))
        self.lines[name].put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_line(self, pattern: str, stream: str = "err", timeout: float = 300) -> str:
        """The first new line of ``stream`` matching the regex ``pattern``; AssertionError if
        the process ends or ``timeout`` seconds pass first (with what it printed)."""
        rx = re.compile(pattern)
        lines = self.lines[stream]
        while True:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"{pattern!r} not printed in {timeout} s by {self.cmd}; "
                                     f"{self.output()}") from None
            if line is None:
                lines.put(None)  # keep EOF visible to later calls
                self.proc.wait()
                raise AssertionError(f"{pattern!r} never printed: {self.cmd} exited "
                                     f"{self.proc.returncode}; {self.output()}")
            self.seen[stream].append(line)
            if rx.search(line):
                return line

    def wait_pause(self, point: str, timeout: float = 300) -> None:
        """Wait until the process reports that it is paused at ``point`` (see testhooks)."""
        self.wait_line(re.escape(f"{MARKER} {point} pid "), "err", timeout)

    def signal(self, sig: int) -> None:
        """Signal the process itself (not its session: a torchrun agent forwards it)."""
        os.kill(self.proc.pid, sig)

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        """Wait for the exit; (return code, all stdout, all stderr)."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.cmd} still running after {timeout} s; "
                                 f"{self.output()}") from None
        for t in self._threads:
            t.join(timeout=60)
        for name in ("out", "err"):
            while True:
                try:
                    line = self.lines[name].get_nowait()
                except queue.Empty:
                    break
                if line is not None:
                    self.seen[name].append(line)
        return rc, "\n".join(self.seen["out"]), "\n".join(self.seen["err"])

    def output(self) -> str:
        return f"stdout: {self.seen['out'][-20:]}; stderr: {self.seen['err'][-20:]}"

    def kill(self) -> None:
        """SIGKILL the process and its descendants (torchrun's workers run in their own process
        groups, so a group kill would leave them holding the work dir) and reap it."""
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux /proc), children first."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found.extend(children)
        todo.extend(children)
    return found


def al_det_lines(err: str) -> list[str]:
    """The ``al-det: error:`` lines of a stderr text (from the marker on: a progress bar of
    another rank may precede it on the same line)."""
    tag = "al-det: error:"
    return [ln[ln.index(tag):] for ln in err.splitlines() if tag in ln]
