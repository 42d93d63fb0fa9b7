"""Sweeps through a real single-node SLURM cluster (launch/slurm_cluster.sh) via launcher=slurm.

CI must install and start the cluster; without slurmctld these tests FAIL unless NFEBENCH_NO_SLURM=1.
"""
import json
import os
import shutil
import subprocess
import time

import pytest
from helpers import launch, start_launch
from common.paths import REPO

CLUSTER = REPO / "launch" / "slurm_cluster.sh"
SWEEP = ["model=gaussian", "num_samples=50", "grid_images=0", "launcher=slurm"]  # no png: no torchvision import


@pytest.fixture(scope="session")
def slurm():
    if shutil.which("slurmctld") is None:
        if os.environ.get("NFEBENCH_NO_SLURM") == "1":
            pytest.skip("NFEBENCH_NO_SLURM=1 and SLURM is not installed")
        pytest.fail(f"SLURM is not installed: run `{CLUSTER} install && {CLUSTER} start` "
                    "(or set NFEBENCH_NO_SLURM=1 to skip these tests locally)")
    if subprocess.run([str(CLUSTER), "status"], capture_output=True, timeout=60).returncode != 0:
        started = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, f"cluster did not start:\n{started.stderr}"


@pytest.fixture
def cleanup():
    """Job ids to scancel after the test, so a failing test leaves nothing queued."""
    ids = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)


def records(sweep):
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.rglob("record.json")}


def array_jobs(sweep):
    """SLURM array job ids submitted for this sweep (submitit keeps one folder per array task too)."""
    d = sweep / ".submitit"
    return sorted(p.name for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def job_logs(sweep, job_id):
    return [p.read_text() for p in (sweep / ".submitit").glob(f"{job_id}_*/*_log.out")]


def test_sweep_lands_all_records_and_rerun_skips_them(slurm, tmp_path):
    args = ["solver=ddim,dpmpp,euler", "nfe=5,10", *SWEEP, f"hydra.sweep.dir={tmp_path}"]
    first = launch("-m", *args)
    assert first.returncode == 0, first.stderr
    recs = records(tmp_path)
    assert len(recs) == 6 and all(r["status"] == "complete" for r in recs.values())
    assert {(r["config"]["solver"]["name"], r["config"]["nfe"]) for r in recs.values()} == \
        {(s, n) for s in ("ddim", "dpmpp", "euler") for n in (5, 10)}
    assert len({r["config_hash"] for r in recs.values()}) == 6
    # every run really went through SLURM: one array job, its logs in the sweep dir
    (job_id,) = array_jobs(tmp_path)
    assert sum("Job completed successfully" in log for log in job_logs(tmp_path, job_id)) == 6

    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("record.json")}
    again = launch("-m", *args)
    assert again.returncode == 0, again.stderr
    assert "sweep summary: 6 runs: 0 done, 6 skipped, 0 failed" in again.stdout
    assert array_jobs(tmp_path) == [job_id], "complete runs are filtered out before anything is submitted"
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("record.json")} == stamps


def squeue(job_id, *fmt):
    out = subprocess.run(["squeue", "-h", "-r", "-j", job_id, "-o", "%i %t %r"], capture_output=True, text=True,
                         timeout=30).stdout
    return [ln.split() for ln in out.splitlines()]


def wait_for(what, predicate, proc, timeout=90):
    deadline = time.time() + timeout
    while not (value := predicate()):
        assert time.time() < deadline and proc.poll() is None, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def test_cancelled_jobs_fail_and_rerun_completes_them(slurm, tmp_path, cleanup):
    # one task at a time: task 0 runs while task 3 is still pending; cancel both. A pending array
    # task cancelled never reaches accounting, so the launcher must notice it left the queue.
    args = ["solver=ddim,euler", "nfe=5,10", *SWEEP, "hydra.launcher.array_parallelism=1",
            "hydra.launcher.lost_after_s=15", f"hydra.sweep.dir={tmp_path}"]
    proc = start_launch("-m", *args)
    try:
        (job_id,) = wait_for("the array job", lambda: array_jobs(tmp_path), proc)
        cleanup.append(job_id)
        wait_for("task 0 to run", lambda: ["R"] in [t[1:2] for t in squeue(job_id) if t[0] == f"{job_id}_0"], proc)
        subprocess.run(["scancel", f"{job_id}_0", f"{job_id}_3"], check=True, timeout=30)
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode != 0, "a cancelled job must fail the sweep"
    assert "sweep summary: 4 runs: 2 done, 0 skipped, 2 failed" in out, out + err[-2000:]
    failed = [ln for ln in out.splitlines() if ln.startswith("  failed: ")]
    assert len(failed) == 2 and "CANCELLED" in failed[0] and "left the queue" in failed[1], failed
    assert failed[0].endswith(f"log: {tmp_path}/.submitit/{job_id}_0/{job_id}_0_0_log.err")
    assert failed[1].endswith(f"log: {tmp_path}/.submitit/{job_id}_3/{job_id}_3_0_log.err")
    recs = records(tmp_path)
    assert sorted(recs) == sorted(n for n in recs if n[0] in "12") and len(recs) == 2

    rerun = launch("-m", *args)
    assert rerun.returncode == 0, rerun.stderr
    assert "sweep summary: 4 runs: 2 done, 2 skipped, 0 failed" in rerun.stdout
    # only the two unfinished runs were queued: the rerun's array has two tasks, runs #0 and #3
    (new_job,) = [j for j in array_jobs(tmp_path) if j != job_id]
    tasks = sorted(p.name for p in (tmp_path / ".submitit").glob(f"{new_job}_*"))
    assert tasks == [f"{new_job}_0", f"{new_job}_1"], tasks
    assert sum("Job completed successfully" in log for log in job_logs(tmp_path, new_job)) == 2
    recs = records(tmp_path)
    assert len(recs) == 4 and all(r["status"] == "complete" for r in recs.values())


@pytest.mark.slow
def test_preempted_task_is_requeued_through_submitit_checkpoint(slurm, tmp_path, cleanup):
    args = ["solver=ddim", "nfe=5,10", *SWEEP, f"hydra.sweep.dir={tmp_path}"]
    proc = start_launch("-m", *args)
    try:
        (job_id,) = wait_for("the array job", lambda: array_jobs(tmp_path), proc)
        cleanup.append(job_id)
        # the run's dir exists once Hydra runs the job, i.e. after submitit installed its signal handler
        wait_for("run 0 to start", lambda: list(tmp_path.glob("0_*")), proc)
        assert not list(tmp_path.glob("0_*/record.json")), "run 0 finished before it could be preempted"
        # what SLURM sends before preempting or timing out a job (submitit's _interrupt does the same)
        subprocess.run(["scancel", "--signal=USR2", f"{job_id}_0"], check=True, timeout=30)
        # SLURM holds a requeued job (reason BeginTime) for a while; release it to keep the test short
        wait_for("the requeue", lambda: ["PD", "BeginTime"] in [t[1:] for t in squeue(job_id) if t[0] == f"{job_id}_0"],
                 proc)
        subprocess.run(["scontrol", "update", f"JobId={job_id}_0", "StartTime=now"], check=True, timeout=30)
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "sweep summary: 2 runs: 2 done, 0 skipped, 0 failed" in out
    log = (tmp_path / ".submitit" / f"{job_id}_0" / f"{job_id}_0_0_log.err").read_text()
    assert "this job is preempted" in log and "DUE TO JOB REQUEUE" in log
    assert len(records(tmp_path)) == 2


def test_unknown_partition_is_one_line_before_submission(slurm, tmp_path):
    bad = launch("-m", "solver=ddim", *SWEEP, "hydra.launcher.partition=no_such_partition",
                 f"hydra.sweep.dir={tmp_path}")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "nfebench: error: SLURM partition 'no_such_partition' does not exist (see `sinfo`); set hydra.launcher.partition=..."]
    assert not (tmp_path / ".submitit").exists()


def test_calibration_is_its_own_slurm_job_and_the_sampling_sweep_requires_it(slurm, tmp_path):
    # DPM-Solver-v3's EMS (small settings): calibrate_only=true as one SLURM job, then a sampling sweep at two
    # NFE with calibration.mode=require finds that one file (its key does not depend on the NFE)
    common = ["model=gaussian", "solver=dpm_solver_v3", "solver.ems_points=41", "solver.ems_samples=8",
              "solver.ems_batch=8", f"calibration.dir={tmp_path / 'cal'}", "num_samples=20", "grid_images=0",
              "launcher=slurm"]
    first = launch("-m", *common, "nfe=5", "calibrate_only=true", f"hydra.sweep.dir={tmp_path / 'a'}")
    assert first.returncode == 0, first.stderr
    (rec,) = records(tmp_path / "a").values()
    assert rec["status"] == "calibrated" and rec["metrics"] == {}
    ems = rec["calibration"]["ems"]
    assert ems["status"] == "computed" and ems["nfe"] > 0
    assert len(array_jobs(tmp_path / "a")) == 1
    second = launch("-m", *common, "nfe=5,8", "calibration.mode=require", f"hydra.sweep.dir={tmp_path / 'b'}")
    assert second.returncode == 0, second.stderr
    recs = records(tmp_path / "b").values()
    assert sorted(r["nfe"]["counted"] for r in recs) == [5, 8]
    assert all(r["status"] == "complete" and r["calibration"]["ems"]["status"] == "hit" for r in recs)
    assert {r["calibration"]["ems"]["file"] for r in recs} == {ems["file"]}
