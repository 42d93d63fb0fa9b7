"""Launcher bad input (one line, exit 2, nothing written), sweep summaries, wandb offline, tqdm."""
import io
import json
import sys
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus

from hydra_plugins.nfebench_launchers.summary import summary_lines
from helpers import launch

TINY = ["model=gaussian", "num_samples=20", "grid_images=0"]


@pytest.mark.parametrize("args,message", [
    (["launcher=nope"], "unknown launcher 'nope'; valid: basic, local, slurm"),
    (["wandb.mode=sometimes"], "unknown wandb.mode 'sometimes'; valid: disabled, offline, online"),
])
def test_bad_launcher_input_is_one_line_before_anything_runs(tmp_path, args, message):
    r = launch("-m", *TINY, *args, f"hydra.sweep.dir={tmp_path}/sweep")
    assert r.returncode == 2 and r.stderr == f"nfebench: error: {message}\n" and r.stdout == ""
    assert not (tmp_path / "sweep").exists()


def test_unwritable_sweep_dir_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")  # a sweep dir under a regular file can never be created
    r = launch("-m", *TINY, "launcher=local", f"hydra.sweep.dir={tmp_path}/file/sweep")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"nfebench: error: sweep dir '{tmp_path}/file/sweep' is not writable: ")
    assert r.stderr.count("\n") == 1


def _ret(status, value, overrides):
    ret = JobReturn(overrides=overrides, status=status)
    ret.return_value = value
    return ret


def test_summary_counts_done_skipped_failed_and_names_failed_logs():
    rets = [_ret(JobStatus.COMPLETED, "done", ["nfe=5"]), _ret(JobStatus.COMPLETED, "skipped", ["nfe=10"]),
            _ret(JobStatus.FAILED, RuntimeError("run #2 died from signal 9"), ["nfe=20", "solver=heun"]),
            _ret(JobStatus.COMPLETED, "done", ["nfe=40"])]
    assert summary_lines(rets, ["a.log", "b.log", "c.log", "d.log"]) == [
        "sweep summary: 4 runs: 2 done, 1 skipped, 1 failed",
        "  failed: nfe=20 solver=heun (RuntimeError: run #2 died from signal 9); log: c.log"]


def test_basic_sweep_prints_summary_and_rerun_skips(tmp_path):
    args = ["-m", *TINY, "solver=ddim,euler", f"hydra.sweep.dir={tmp_path}"]
    first = launch(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1] == "sweep summary: 2 runs: 2 done, 0 skipped, 0 failed"
    again = launch(*args)
    assert again.stdout.splitlines()[-1] == "sweep summary: 2 runs: 0 done, 2 skipped, 0 failed"
    assert len(list(tmp_path.glob("*/record.json"))) == 2


@pytest.mark.slow
def test_wandb_offline_writes_a_local_run_and_no_network(tmp_path):
    # WANDB_MODE=disabled comes from helpers.launch; the config's explicit mode wins. No API key, no host.
    env = {"WANDB_API_KEY": "", "WANDB_BASE_URL": "http://127.0.0.1:9"}
    r = launch(*TINY, "wandb.mode=offline", "wandb.project=nfebench-test", f"hydra.run.dir={tmp_path}", env=env)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "record.json").read_text())
    assert "wandb" not in rec["config"], "tracking settings are not part of a run's identity"
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (data,) = run_dir.glob("run-*.wandb")  # the offline run file holds what was logged
    assert rec["config_hash"].encode() in data.read_bytes() and b"ode_rmse" in data.read_bytes()


def test_wandb_disabled_never_imports_it(tmp_path):
    from launch.tracking import log_run

    sys.modules.pop("wandb", None)
    assert log_run({}, {"mode": "disabled"}, tmp_path) is None
    assert "wandb" not in sys.modules and not (tmp_path / "wandb").exists()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_sampling_progress_only_on_a_terminal(monkeypatch):
    from launch.run import _progress

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert list(_progress(range(3), "sampling")) == [0, 1, 2] and sys.stderr.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert list(_progress(range(3), "sampling")) == [0, 1, 2] and "sampling" in sys.stderr.getvalue()


def test_bad_run_in_a_sweep_fails_alone_and_is_summarised(tmp_path):
    r = launch("-m", *TINY, "solver=ddim", "nfe=0,5", f"hydra.sweep.dir={tmp_path}")
    assert r.returncode != 0
    lines = r.stdout.splitlines()
    assert "sweep summary: 2 runs: 1 done, 0 skipped, 1 failed" in lines
    (failed,) = [ln for ln in lines if ln.startswith("  failed: ")]
    assert "nfe=0" in failed and "(NfebenchError: nfe must be an integer >= 1; got 0)" in failed
    assert failed.endswith("launch.log") and Path(failed.split("log: ")[1]).parent.name.startswith("0_")
    # the summary is the last word: no Hydra traceback after it, and the log it names says what failed
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr and lines[-2].startswith("sweep summary:")
    assert "nfebench: error: nfe must be an integer >= 1; got 0" in Path(failed.split("log: ")[1]).read_text()
    assert [p.parent.name[0] for p in tmp_path.glob("*/record.json")] == ["1"]
