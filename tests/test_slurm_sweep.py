"""scripts/slurm/sweep.sh and sweep.sbatch with Slurm and al-det faked on PATH."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

SLURM = Path(__file__).resolve().parents[1] / "scripts" / "slurm"

FAKE_AL_DET = """#!/bin/bash
echo "$@" >> "$FAKE_DIR/al-det.log"
if [[ " $* " == *" --list "* ]]; then
  printf '%s\\n' '0 base R/_cycle0/seed_0' '1 base R/_cycle0/seed_1' '2 member R/a/seed_0' \\
    '3 member R/a/seed_1'
elif [[ " $* " == *" --stages "* ]]; then
  printf '%s\\n' "$FAKE_DIR/wd" "0 acquire" "1 train" "1 evaluate"
fi
"""
FAKE_SBATCH = """#!/bin/bash
printf '%s\\n' "$*" >> "$FAKE_DIR/sbatch.log"
echo "5$(wc -l < "$FAKE_DIR/sbatch.log");cluster"
"""
FAKE_SRUN = """#!/bin/bash
echo "$@" >> "$FAKE_DIR/srun.log"
exit "${FAKE_SRUN_STATUS:-0}"
"""
FAKE_SCONTROL = """#!/bin/bash
echo "$@" >> "$FAKE_DIR/scontrol.log"
"""


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("al-det", FAKE_AL_DET), ("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN),
                       ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    out = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out.update(PATH=f"{bin_dir}:{out['PATH']}", FAKE_DIR=str(tmp_path))
    return out


@pytest.mark.parametrize("script", ["sweep.sh", "sweep.sbatch"])
def test_bash_syntax(script: str) -> None:
    subprocess.run(["bash", "-n", str(SLURM / script)], check=True)


def test_sweep_sh_submits_bases_then_members(env: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = subprocess.run(["bash", str(SLURM / "sweep.sh")], capture_output=True, text=True,
                          env={**env, "ROOT": str(root), "SWEEP": "s.yaml", "GPUS": "2",
                               "MAX_PARALLEL": "3"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    first, second = (tmp_path / "sbatch.log").read_text().splitlines()
    assert "--array=0-1%3" in first and "--gpus-per-node=2" in first
    assert "--array=2-3%3" in second and "--dependency=afterok:51" in second
    assert f"ROOT={root}" in first and first.endswith("sweep.sbatch")
    assert (tmp_path / "al-det.log").read_text().split()[:4] == ["sweep", "-c", "s.yaml", "-w"]


def _task(env: dict[str, str], tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    job = {**env, "ROOT": str(tmp_path / "root"), "SLURM_ARRAY_TASK_ID": "3",
           "SLURM_ARRAY_JOB_ID": "40", "SLURM_JOB_ID": "43", "GPUS": "2", **extra}
    return subprocess.run(["bash", str(SLURM / "sweep.sbatch")], capture_output=True,
                          text=True, env=job, timeout=60)


def test_sweep_task_runs_its_remaining_stages(env: dict[str, str], tmp_path: Path) -> None:
    proc = _task(env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "al-det.log").read_text().splitlines()
    assert calls[0] == f"sweep -w {tmp_path / 'root'} --task 3 --stages"
    assert calls[1] == f"acquire -w {tmp_path / 'wd'} --cycle 0"
    srun = (tmp_path / "srun.log").read_text().splitlines()
    assert [s.split("-m al_det ")[1] for s in srun] == [
        f"train -w {tmp_path / 'wd'} --cycle 1", f"evaluate -w {tmp_path / 'wd'} --cycle 1"]
    assert "--nproc_per_node 2" in srun[0]
    assert not (tmp_path / "scontrol.log").exists()


def test_sweep_task_requeues_on_143_and_fails_otherwise(env: dict[str, str],
                                                        tmp_path: Path) -> None:
    proc = _task(env, tmp_path, FAKE_SRUN_STATUS="143")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "43"]
    (tmp_path / "scontrol.log").unlink()
    proc = _task(env, tmp_path, FAKE_SRUN_STATUS="2")
    assert proc.returncode == 2 and "failed with status 2" in proc.stderr
    assert not (tmp_path / "scontrol.log").exists()
