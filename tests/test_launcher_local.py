"""launcher=local: parallel subprocess workers, one device each; killed runs leave no record."""
import json
import os
import signal
import time
from pathlib import Path

import pytest

from hydra_plugins.nfebench_launchers.local import CPU, worker_env, worker_slots
from helpers import launch, start_launch
from common.errors import NfebenchError
from common.paths import REPO

TINY = ["model=gaussian", "num_samples=50", "grid_images=0", "launcher=local"]  # no png: no torchvision import


def records(sweep):
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/record.json")}


def workers_of(sweep):
    """{run index: pid} of this sweep's live workers, by the run log each one writes to (its fd 1)."""
    out = {}
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            log = os.readlink(proc / "fd" / "1")
        except OSError:
            continue
        if b"hydra_plugins.nfebench_launchers.worker" in argv and log.startswith(f"{sweep}/.local/"):
            out[int(Path(log).name.split("_")[0])] = int(proc.name)
    return out


def test_slots_one_gpu_per_worker_or_n_cpu_workers():
    assert worker_slots(["1", 3], cpu_workers=4) == ["1", "3"]
    assert worker_slots([], cpu_workers=3) == [CPU] * 3
    env = worker_env("3", 2, None)
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and str(REPO) in env["PYTHONPATH"].split(os.pathsep)
    assert worker_env(CPU, 2, 1)["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(NfebenchError, match="cpu_workers"):
        worker_slots([], cpu_workers=0)


def test_each_run_sees_exactly_its_own_gpu(tmp_path):
    # two runs on two (made-up) GPU ids: both start at once, so each must get the other id
    r = launch("-m", "solver=ddim,euler", "nfe=5", *TINY, "hydra.launcher.gpus=[3,5]", f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    assert len(records(tmp_path)) == 2
    seen = []
    for log in sorted((tmp_path / ".local").glob("*_log.out")):
        (line,) = [ln for ln in log.read_text().splitlines() if "CUDA_VISIBLE_DEVICES=" in ln]
        seen.append(line.split("CUDA_VISIBLE_DEVICES=")[1])
    assert sorted(seen) == ["'3'", "'5'"], seen


@pytest.mark.slow
def test_sigkilled_worker_leaves_no_record_and_rerun_completes_the_sweep(tmp_path):
    args = ["solver=ddim,euler,dpmpp,heun", "nfe=5,10,20", *TINY, "hydra.launcher.cpu_workers=2",
            f"hydra.sweep.dir={tmp_path}"]
    proc = start_launch("-m", *args)
    victim, deadline = None, time.time() + 120
    try:
        # kill a worker whose run has started (its output dir exists) but has not written its record
        while victim is None:
            assert time.time() < deadline and proc.poll() is None, "no worker caught mid-run"
            for idx, pid in workers_of(tmp_path).items():
                started = list(tmp_path.glob(f"{idx}_*"))
                if started and not (started[0] / "record.json").exists():
                    os.kill(pid, signal.SIGKILL)
                    victim = idx
                    break
            time.sleep(0.05)
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode != 0, "a killed run must fail the sweep"
    assert "sweep summary: 12 runs: 11 done, 0 skipped, 1 failed" in out, out
    (failed,) = [ln for ln in out.splitlines() if ln.startswith("  failed: ")]
    assert "died from signal 9" in failed and failed.endswith(f"log: {tmp_path}/.local/{victim}_log.out")
    recs = records(tmp_path)
    assert len(recs) == 11 and not any(name.startswith(f"{victim}_") for name in recs)
    assert not list(tmp_path.rglob("*.tmp")), "a killed run must leave no partial file"
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/record.json")}

    again = launch("-m", *args)
    assert again.returncode == 0, again.stderr
    assert "sweep summary: 12 runs: 1 done, 11 skipped, 0 failed" in again.stdout
    recs = records(tmp_path)
    assert len(recs) == 12 and all(r["status"] == "complete" for r in recs.values())
    assert len({r["config_hash"] for r in recs.values()}) == 12
    assert {(r["config"]["solver"]["name"], r["config"]["nfe"]) for r in recs.values()} == \
        {(s, n) for s in ("ddim", "euler", "dpmpp", "heun") for n in (5, 10, 20)}
    for name, r in recs.items():  # each record sits in its own run's dir
        assert f"solver={r['config']['solver']['name']}" in name and f"nfe={r['config']['nfe']}," in name
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "complete records must not be rewritten"
