"""Failure paths (issue 11): one-line errors for bad input, corrupt records, killed sweeps, permissions."""
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from helpers import launch, launch_argv, start_launch
from common.paths import REPO

TINY = ["model=gaussian", "num_samples=8", "grid_images=0"]


def _no_gpu_device():
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return "device=cuda" if n == 0 else f"device=cuda:{n}"  # a device this machine does not have


def _catalogue(tmp: Path):
    """(name, argv of `python -m ...` or of launch.py, expected message fragment)."""
    (tmp / "afile").write_text("")
    ckpt = tmp / "ckpt_no_weights"
    ckpt.mkdir()
    (ckpt / "config.json").write_text((REPO / "models/digits_unet/config.json").read_text())
    truncated = tmp / "truncated"
    (truncated / "0_run").mkdir(parents=True)
    (truncated / "0_run" / "record.json").write_text('{"status": "complete", "config": {"nf')
    keyless = tmp / "keyless"
    (keyless / "0_run").mkdir(parents=True)
    (keyless / "0_run" / "record.json").write_text('{"status": "complete"}')
    L = launch_argv()
    M = [sys.executable, "-m", "results.merge"]

    def run(name, *args, multirun=False):
        out = [f"hydra.sweep.dir={tmp}/{name}"] if multirun else [f"hydra.run.dir={tmp}/{name}"]
        return [*L, *(["-m"] if multirun else []), *TINY, *args, *out]

    return [
        ("t_end_text", run("t_end_text", "t_end=abc"), "t_end must be a number; got 'abc'"),
        ("eta_text", run("eta_text", "solver=ddim", "solver.eta=abc"), "solver.eta must be a number; got 'abc'"),
        ("rho_zero", run("rho_zero", "solver=heun", "schedule.rho=0"), "schedule.rho must be > 0; got 0"),
        ("n_corrector", run("n_corrector", "solver=score_sde_pc", "solver.n_corrector=-1"),
         "solver.n_corrector must be >= 0; got -1"),
        ("device", run("device", _no_gpu_device()), "device=cuda"),
        ("run_dir_under_file", [*L, *TINY, f"hydra.run.dir={tmp}/afile/run"],
         f"run dir '{tmp}/afile/run' is not writable"),
        ("cpu_workers", run("cpu_workers", "launcher=local", "hydra.launcher.cpu_workers=0", multirun=True),
         "hydra.launcher.cpu_workers must be an integer >= 1; got 0"),
        ("ckpt_no_weights", [*L, "model=digits_unet", f"model.path={ckpt}", "num_samples=4",
                             f"hydra.run.dir={tmp}/ckpt_run"], f"{ckpt} has config.json but no weights file"),
        ("t_end_zero", run("t_end_zero", "t_end=0"), "t_end must lie in (0, T)"),
        ("t_end_two", run("t_end_two", "t_end=2"), "t_end must lie in (0, T)"),
        ("window", run("window", "solver=time_shift", "solver.window=-1"), "solver.window must be >= 0; got -1"),
        ("churn", run("churn", "solver=euler", "solver.S_churn=-1"), "solver.S_churn must be >= 0; got -1"),
        ("unknown_key", run("unknown_key", "+foo=1"), "unknown config key 'foo'"),
        ("unknown_key_sweep", run("unknown_key_sweep", "+foo=1,2", multirun=True), "unknown config key 'foo'"),
        ("inception_missing", [*L, "model=digits_unet", "metrics=fid_is", f"metrics.reference={tmp}/ref.npz",
                               "num_samples=4", f"hydra.run.dir={tmp}/inception_missing"],
         "torch-fidelity Inception weights not found"),
        ("reference_missing", run("reference_missing", "metrics=fid", "metrics.extractor=tiny",
                                  f"metrics.reference={tmp}/no_such_ref.npz"), "no_such_ref.npz"),
        ("merge_truncated", [*M, str(truncated)], f"corrupt record {truncated}/0_run/record.json (not JSON"),
        ("merge_keyless", [*M, str(keyless)], f"corrupt record {keyless}/0_run/record.json (missing keys: config,"),
        ("merge_not_a_dir", [*M, f"{tmp}/afile"], "not a directory"),
        ("merge_no_args", M, "the following arguments are required: root"),
    ]


def test_every_bad_input_is_one_line_exit_2_and_writes_no_record(tmp_path):
    cases = _catalogue(tmp_path)
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "empty_torch_home")}  # no Inception weights there

    def go(case):
        return subprocess.run(case[1], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)

    with ThreadPoolExecutor(max_workers=4) as pool:  # independent processes: mostly import time
        results = list(pool.map(go, cases))
    bad = []
    for (name, argv, fragment), r in zip(cases, results):
        lines = r.stderr.splitlines()
        ok = (r.returncode == 2 and len(lines) == 1 and lines[0].startswith("nfebench: error: ")
              and fragment in lines[0] and "Traceback" not in r.stdout + r.stderr)
        if not ok:
            bad.append(f"{name}: exit {r.returncode}, stderr {r.stderr[-600:]!r}")
    assert not bad, "\n".join(bad)
    written = [p for p in tmp_path.rglob("*") if p.name.startswith("record.json") and "truncated" not in str(p)
               and "keyless" not in str(p)] + list(tmp_path.rglob("merged"))
    assert not written, written
    # merge never touches what it could not read
    assert (tmp_path / "truncated/0_run/record.json").read_text().endswith('"nf')


def test_fid_files_are_checked_before_the_model_is_built(tmp_path, monkeypatch):
    import launch.run as run
    from common.errors import NfebenchError

    def no_model(cfg):
        raise AssertionError("the model was built before the metric files were checked")

    monkeypatch.setattr(run, "build_model", no_model)
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "configs/config.yaml"))
    cfg.pop("hydra"), cfg.pop("defaults")
    cfg.update(model={"name": "g", "family": "gaussian", "noise_schedule": {"name": "vp_linear"}},
               solver={"name": "ddim", "eta": 0.0}, schedule={"name": "time_uniform"}, num_samples=4,
               metrics={"name": "fid", "extractor": "tiny", "reference": str(tmp_path / "missing.npz")})
    with pytest.raises(NfebenchError, match="missing.npz"):
        run.run_experiment(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_png_grid_draws_what_torchvision_make_grid_draws():
    import io
    import math

    import numpy as np
    from PIL import Image
    from torchvision.utils import make_grid

    from launch.run import _png_grid

    g = torch.Generator().manual_seed(0)
    for n, c, h in [(64, 3, 8), (10, 1, 8), (7, 3, 32), (1, 3, 16), (2, 1, 8)]:
        x = torch.rand(n, c, h, h, generator=g) * 2.2 - 1.1
        got = np.array(Image.open(io.BytesIO(_png_grid(x))))
        y = torch.nn.functional.interpolate((x.clamp(-1, 1) + 1) / 2, scale_factor=max(1, 64 // h), mode="nearest")
        ref = make_grid(y, nrow=int(math.ceil(math.sqrt(n))), padding=2, pad_value=1.0)
        ref = (ref.permute(1, 2, 0) * 255).round().byte().numpy()
        assert got.shape == ref.shape and (got == ref).all(), (n, c, h)


# ---- corrupt records, permissions -----------------------------------------------------------

SWEEP = ["model=gaussian", "solver=ddim,heun", "nfe=4,6", "num_samples=16", "grid_images=4"]


def _stamps(sweep):
    return {p: p.stat().st_mtime_ns for p in sweep.glob("*/record.json")}


def test_corrupt_record_is_set_aside_and_only_its_run_redone(tmp_path):
    sweep = tmp_path / "sweep"
    first = launch("-m", *SWEEP, f"hydra.sweep.dir={sweep}", preexec_fn=lambda: os.umask(0o027))
    assert first.returncode == 0, first.stderr
    recs = sorted(sweep.glob("*/record.json"))
    assert len(recs) == 4
    # files come out as a plain open() under the umask would make them (not mkstemp's 0600)
    for name in ("record.json", "metric_state.npz", "samples.png"):
        assert (recs[0].parent / name).stat().st_mode & 0o777 == 0o640, name

    for launcher, bad, content in (("basic", recs[1], '{"status": "complete", "conf'),
                                   ("local", recs[2], '{"status": "complete", "config_hash": "x"}')):
        bad.write_text(content)
        stamps = {p: t for p, t in _stamps(sweep).items() if p != bad}
        r = launch("-m", *SWEEP, f"launcher={launcher}", f"hydra.sweep.dir={sweep}")
        assert r.returncode == 0, r.stderr[-2000:]
        assert "sweep summary: 4 runs: 1 done, 3 skipped, 0 failed" in r.stdout, (launcher, r.stdout[-1500:])
        warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("nfebench: warning:")]
        assert len(warnings) == 1 and str(bad) in warnings[0], (launcher, r.stderr[-2000:])
        (aside,) = bad.parent.glob("record.json.corrupt-*")
        assert aside.read_text() == content, "the bad file is moved aside, never deleted"
        aside.unlink()
        redone = json.loads(bad.read_text())
        assert redone["status"] == "complete" and bad in _stamps(sweep)
        assert {p: t for p, t in _stamps(sweep).items() if p != bad} == stamps, "the other runs were skipped"


def test_worker_killed_after_its_record_counts_as_done(tmp_path):
    from hydra.core.utils import JobStatus

    from hydra_plugins.nfebench_launchers.local import NfebenchLocalLauncher, _Job
    from common.files import atomic_write_json

    launcher = NfebenchLocalLauncher()
    launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    cfg = OmegaConf.create({})
    job = _Job(3, ["nfe=5"], cfg, tmp_path / "p.pkl", tmp_path / "r.pkl", tmp_path / "log", hash="abc")
    assert launcher._collect(job, "died from signal 9").status == JobStatus.FAILED
    (tmp_path / "3_run").mkdir()
    atomic_write_json(tmp_path / "3_run/record.json", {"status": "complete", "config_hash": "abc", "config": {}, "model": {}, "solver": {},
                                                        "nfe": {}, "samples": {}, "metrics": {}, "timing": {}})
    assert launcher._collect(job, "died from signal 9").status == JobStatus.COMPLETED


# ---- no orphan workers ----------------------------------------------------------------------

def _children(pid):
    out = []
    for proc in Path("/proc").iterdir():
        try:
            status = (proc / "status").read_text()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in status and b"nfebench_launchers.worker" in (proc / "cmdline").read_bytes():
            out.append(int(proc.name))
    return out


def _alive(pid):
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _wait(what, predicate, timeout=60):
    deadline = time.time() + timeout
    while not (value := predicate()):
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def test_no_worker_outlives_a_terminated_or_killed_local_sweep(tmp_path):
    # long runs of cheap batches: killed within a second or two of starting
    args = ["-m", "model=gaussian", "solver=ddim,euler,heun", "nfe=10",
            "num_samples=1000000", "batch_size=50", "grid_images=0", "launcher=local",
            "hydra.launcher.cpu_workers=2", f"hydra.sweep.dir={tmp_path}"]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = start_launch(*args)
        try:
            workers = _wait("two workers", lambda: len(_children(proc.pid)) == 2 and _children(proc.pid))
            _wait("a run to start", lambda: list(tmp_path.glob("*_*")))
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=60)
            _wait("the workers to end", lambda: not any(_alive(w) for w in workers), timeout=10)
        finally:
            proc.kill()
        if sig == signal.SIGTERM:
            assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
            assert "sweep summary: 3 runs: 0 done, 0 skipped, 3 failed" in out, out[-2000:] + err[-2000:]
            assert "stopped by SIGTERM" in out and "Traceback" not in out + err
        else:
            assert proc.returncode == -signal.SIGKILL
    assert not list(tmp_path.rglob("record.json"))
