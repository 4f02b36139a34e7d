"""scripts/slurm: syntax, the job chain experiment.sh submits, and requeue on SIGTERM.

Slurm is faked by small scripts on PATH (sbatch, srun, scontrol, al-det) that record their
arguments, so these tests run anywhere bash does.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "scripts" / "slurm"
SCRIPTS = ["train.sbatch", "evaluate.sbatch", "infer.sbatch", "acquire.sbatch", "experiment.sh"]
STAGES = ["train", "evaluate", "infer", "acquire"]

FAKE_SBATCH = """#!/bin/bash
# record the arguments (one per line, a blank line between calls), print "id;cluster"
n=$(( $(cat "$FAKE_DIR/count" 2>/dev/null || echo 1000) + 1 ))
echo "$n" > "$FAKE_DIR/count"
printf '%s\\n' "$@" >> "$FAKE_DIR/sbatch.log"
echo >> "$FAKE_DIR/sbatch.log"
echo "$n;cluster1"
"""
FAKE_AL_DET = """#!/bin/bash
echo "$@" >> "$FAKE_DIR/al-det.log"
if [[ $1 == init ]]; then printf 'name: x\\ncycles: 2\\n' > "$5/config.yaml"; fi
"""
FAKE_SCONTROL = """#!/bin/bash
# a long node list: a job script that reads it through `| head -n 1` dies of SIGPIPE
if [[ $1 == show ]]; then echo "${FAKE_HOST:-node7}"; exec seq -f 'node%g' 8 30000; fi
echo "$@" >> "$FAKE_DIR/scontrol.log"
"""
FAKE_SRUN = """#!/bin/bash
# FAKE_STEP: ok | fail (exit 2) | exit143 | term (run until SIGTERM, then exit 1 like torchrun)
#            | exec (run the step's command itself, without srun's own --options)
echo "$@" >> "$FAKE_DIR/srun.log"
case $FAKE_STEP in
    exec)
        while [[ $1 == --* ]]; do shift; done
        exec "$@" ;;
    ok) exit 0 ;;
    fail) exit 2 ;;
    exit143) exit 143 ;;
    term)
        trap 'echo got-term >> "$FAKE_DIR/srun.log"; exit 1' TERM
        touch "$FAKE_DIR/started"
        while true; do sleep 0.05; done ;;
esac
"""


def _write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture()
def fake(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH starts with fake sbatch / srun / scontrol / al-det."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("al-det", FAKE_AL_DET),
                       ("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        _write_exe(bin_dir / name, text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", FAKE_DIR=str(tmp_path))
    return env


def _sbatch_calls(tmp_path: Path) -> list[list[str]]:
    text = (tmp_path / "sbatch.log").read_text()
    return [block.split("\n") for block in text.strip("\n").split("\n\n")]


def _opt(args: list[str], name: str) -> str | None:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return values[-1] if values else None


def _experiment(env: dict[str, str], **variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SLURM / "experiment.sh")], env={**env, **variables},
                          capture_output=True, text=True, timeout=60)


# --------------------------------------------------------------------------- syntax


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script: str) -> None:
    proc = subprocess.run(["bash", "-n", str(SLURM / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck(script: str) -> None:
    proc = subprocess.run(["shellcheck", "-s", "bash", str(SLURM / script)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("script", ["train.sbatch", "evaluate.sbatch", "infer.sbatch"])
def test_gpu_job_header(script: str) -> None:
    text = (SLURM / script).read_text()
    for directive in ("--nodes=", "--gpus-per-node=", "--ntasks-per-node=1",
                      "--cpus-per-task=", "--time=", "--requeue", "--signal=B:TERM@120"):
        assert f"#SBATCH {directive}" in text, directive


# --------------------------------------------------------------------------- experiment.sh


def test_chain_of_dependent_jobs(fake: dict[str, str], tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "config.yaml").write_text("name: x\ncycles: 3\nseed: 0\n")
    proc = _experiment(fake, WORKDIR=str(workdir), GPUS="4", PARTITION="gpu",
                       CPU_PARTITION="cpu", ACCOUNT="proj", TIME="12:00:00")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "al-det.log").exists()  # config.yaml exists: no init
    calls = _sbatch_calls(tmp_path)
    expected = [(0, s) for s in STAGES] + [(1, s) for s in STAGES] + [(2, "train"),
                                                                       (2, "evaluate")]
    assert len(calls) == len(expected) == 10
    for i, (args, (cycle, stage)) in enumerate(zip(calls, expected, strict=True)):
        assert args[0] == "--parsable"
        assert args[-1] == str(SLURM / f"{stage}.sbatch")
        # the first job waits for nothing; every other one for the job just before it
        assert _opt(args, "dependency") == (None if i == 0 else f"afterok:{1000 + i}")
        assert _opt(args, "export") == f"ALL,WORKDIR={workdir},CYCLE={cycle},GPUS=4,VENV="
        assert _opt(args, "job-name") == f"al-det-c{cycle}-{stage}"
        assert _opt(args, "account") == "proj"
        assert _opt(args, "kill-on-invalid-dep") == "yes"
        if stage == "acquire":
            assert _opt(args, "partition") == "cpu" and _opt(args, "gpus-per-node") is None
        else:
            assert _opt(args, "partition") == "gpu" and _opt(args, "gpus-per-node") == "4"
            assert _opt(args, "nodes") == "1" and _opt(args, "cpus-per-task") == "16"
    assert [_opt(a, "time") for a in calls[:4]] == ["12:00:00", "02:00:00", "04:00:00",
                                                   "02:00:00"]
    assert (workdir / "slurm-logs").is_dir()
    lines = proc.stdout.splitlines()
    assert lines[0] == "1001 cycle 0 train" and lines[9] == "1010 cycle 2 evaluate"


def test_init_on_login_node(fake: dict[str, str], tmp_path: Path) -> None:
    workdir, config = tmp_path / "new", tmp_path / "exp.yaml"
    proc = _experiment(fake, WORKDIR=str(workdir), CONFIG=str(config))
    assert proc.returncode == 0, proc.stderr
    init = (tmp_path / "al-det.log").read_text().split()
    assert init == ["init", "-c", str(config), "-w", str(workdir)]
    stages = [(_opt(a, "job-name")) for a in _sbatch_calls(tmp_path)]
    assert stages == ["al-det-c0-train", "al-det-c0-evaluate", "al-det-c0-infer",
                      "al-det-c0-acquire", "al-det-c1-train", "al-det-c1-evaluate"]


def test_missing_config_is_one_clear_error(fake: dict[str, str], tmp_path: Path) -> None:
    proc = _experiment(fake, WORKDIR=str(tmp_path / "new"))
    assert proc.returncode == 2
    assert "config.yaml not found: set CONFIG" in proc.stderr
    assert not (tmp_path / "sbatch.log").exists()


def test_first_cycle_after_and_extra(fake: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("cycles: 3\n")
    proc = _experiment(fake, WORKDIR=str(tmp_path), FIRST_CYCLE="1", AFTER="555",
                       EXTRA_SBATCH="--mail-type=FAIL --time=1:00:00")
    assert proc.returncode == 0, proc.stderr
    calls = _sbatch_calls(tmp_path)
    assert [_opt(a, "job-name") for a in calls] == [
        "al-det-c1-train", "al-det-c1-evaluate", "al-det-c1-infer", "al-det-c1-acquire",
        "al-det-c2-train", "al-det-c2-evaluate"]
    assert _opt(calls[0], "dependency") == "afterok:555"
    assert all(_opt(a, "mail-type") == "FAIL" and _opt(a, "time") == "1:00:00" for a in calls)


def test_dry_run_submits_nothing(fake: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("cycles: 2\n")
    proc = _experiment(fake, WORKDIR=str(tmp_path), DRY_RUN="1")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "sbatch.log").exists()
    assert proc.stdout.count("sbatch --parsable") == 6


# --------------------------------------------------------------------------- the jobs


def _job_env(fake: dict[str, str], tmp_path: Path, step: str, **extra: str) -> dict[str, str]:
    return {**fake, "FAKE_STEP": step, "WORKDIR": str(tmp_path / "work"), "CYCLE": "2",
            "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "node[7-8]", "SLURM_NNODES": "2",
            "SLURM_CPUS_PER_TASK": "8", "SLURM_GPUS_PER_NODE": "a100:4", **extra}


def _requeues(tmp_path: Path) -> list[str]:
    log = tmp_path / "scontrol.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("stage", ["train", "evaluate", "infer"])
def test_gpu_job_runs_torchrun(fake: dict[str, str], tmp_path: Path, stage: str) -> None:
    proc = subprocess.run(["bash", str(SLURM / f"{stage}.sbatch")], capture_output=True,
                          text=True, env=_job_env(fake, tmp_path, "ok"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    srun = (tmp_path / "srun.log").read_text().split()
    port = str(20000 + 77)
    assert srun[srun.index("torchrun"):] == [
        "torchrun", "--nnodes", "2", "--nproc_per_node", "4", "--rdzv_backend", "c10d",
        "--rdzv_endpoint", f"node7:{port}", "--rdzv_id", "77",
        "-m", "al_det", stage, "-w", str(tmp_path / "work"), "--cycle", "2"]
    assert "--ntasks-per-node=1" in srun and "--cpus-per-task=8" in srun
    assert _requeues(tmp_path) == []


def test_failed_step_is_not_requeued(fake: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(SLURM / "train.sbatch")], capture_output=True,
                          text=True, env=_job_env(fake, tmp_path, "fail"), timeout=60)
    assert proc.returncode == 2
    assert _requeues(tmp_path) == []


def test_exit_143_requeues_until_the_limit(fake: dict[str, str], tmp_path: Path) -> None:
    env = _job_env(fake, tmp_path, "exit143", SLURM_RESTART_COUNT="2", MAX_REQUEUES="3")
    proc = subprocess.run(["bash", str(SLURM / "train.sbatch")], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert _requeues(tmp_path) == ["requeue 77"]
    env["SLURM_RESTART_COUNT"] = "3"
    proc = subprocess.run(["bash", str(SLURM / "train.sbatch")], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 143 and "giving up" in proc.stderr
    assert _requeues(tmp_path) == ["requeue 77"]


def test_sigterm_is_forwarded_and_the_job_requeued(fake: dict[str, str],
                                                   tmp_path: Path) -> None:
    job = subprocess.Popen(["bash", str(SLURM / "train.sbatch")], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           env=_job_env(fake, tmp_path, "term"))
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline and job.poll() is None, job.communicate()
            time.sleep(0.05)
        job.send_signal(signal.SIGTERM)  # what --signal=B:TERM@120 does
        out, err = job.communicate(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, err
    assert "got-term" in (tmp_path / "srun.log").read_text()  # the step got the signal
    assert _requeues(tmp_path) == ["requeue 77"]
    assert "requeueing job 77" in out


def test_acquire_job(fake: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(SLURM / "acquire.sbatch")], capture_output=True,
                          text=True, env=_job_env(fake, tmp_path, "ok"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "al-det.log").read_text().split() == [
        "acquire", "-w", str(tmp_path / "work"), "--cycle", "2"]


TINY = """\
seed: 1
cycles: 2
initial: 8
data:
  synthetic: {n_pool: 16, n_test: 4, image_size: 100, seed: 2}
model: {name: tiny_frcnn, min_size: 100, max_size: 100}
train: {epochs: 1, batch_size: 4, warmup_iters: 1, workers: 0}
"""


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_gpu_job_torchrun_command_really_runs(fake: dict[str, str], tmp_path: Path) -> None:
    """The sbatch script's own torchrun line, executed (2 CPU processes, one node): it trains."""
    import socket

    from click.testing import CliRunner

    from al_det.cli import main

    (tmp_path / "tiny.yaml").write_text(TINY)
    workdir = tmp_path / "work"
    init = CliRunner().invoke(main, ["init", "-c", str(tmp_path / "tiny.yaml"), "-w",
                                     str(workdir)])
    assert init.exit_code == 0, init.output
    fake.pop("AL_DET_TEST_PAUSE_AT", None)
    for _attempt in range(3):  # the port is free when picked; retry if taken before the bind
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = _job_env(fake, tmp_path, "exec", CYCLE="0", SLURM_NNODES="1", GPUS="2",
                       SLURM_CPUS_PER_TASK="1", FAKE_HOST="127.0.0.1", PORT=str(port),
                       OMP_NUM_THREADS="1")
        proc = subprocess.run(["bash", str(SLURM / "train.sbatch")], capture_output=True,
                              text=True, env=env, timeout=300)
        if "address already in use" not in proc.stderr.lower():
            break
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "al-det train cycle 0: done" in proc.stdout
    assert (workdir / "cycle_000" / "model.pth").exists()
    assert _requeues(tmp_path) == []
    srun = (tmp_path / "srun.log").read_text().split()
    assert srun[srun.index("torchrun"):srun.index("-m")] == [
        "torchrun", "--nnodes", "1", "--nproc_per_node", "2", "--rdzv_backend", "c10d",
        "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "77"]
