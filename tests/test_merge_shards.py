"""Shards: disjoint sample_offset ranges run as separate jobs merge into the single-pass result."""
import json

import numpy as np
import pytest

from results.merge import check_ranges, main as merge_main
from common.errors import NfebenchError
from helpers import launch

RUN = ["model=gaussian", "solver=dpmpp", "nfe=6", "batch_size=16", "grid_images=0"]


def test_merged_shards_equal_the_single_pass(tmp_path):
    shards, single = tmp_path / "shards", tmp_path / "single"
    r = launch("-m", *RUN, "num_samples=20", "sample_offset=0,20,40", f"hydra.sweep.dir={shards}")
    assert r.returncode == 0, r.stderr
    parts = [json.loads(p.read_text()) for p in sorted(shards.glob("*/record.json"))]
    assert len({p["config_hash"] for p in parts}) == 3, "shards must hash distinctly (or skip-complete would merge them)"
    r = launch(*RUN, "num_samples=60", f"hydra.run.dir={single}")
    assert r.returncode == 0, r.stderr
    ref = json.loads((single / "record.json").read_text())

    assert merge_main([str(shards)]) == 0
    (out,) = (shards / "merged").glob("*/record.json")
    merged = json.loads(out.read_text())
    assert merged["status"] == "complete" and merged["samples"]["index_range"] == [0, 60]
    assert merged["config_hash"] == ref["config_hash"] and merged["config"] == ref["config"]
    assert [s["index_range"] for s in merged["shards"]] == [[0, 20], [20, 40], [40, 60]]
    assert merged["nfe"] == ref["nfe"] and merged["metrics_protocol"] == ref["metrics_protocol"]
    assert merged["samples"] == ref["samples"] and merged["schedule"] == ref["schedule"]
    # batches of 16+4 per shard against 16,16,16,12: other call shapes, the same multiply-accumulates
    assert merged["compute"]["macs_total"] == ref["compute"]["macs_total"] > 0
    assert merged["compute"]["macs_per_sample"] == ref["compute"]["macs_per_sample"]
    # the exact metrics' statistics merge exactly; fd_pixel goes through a matrix square root of
    # a rank-deficient covariance (60 samples, 192 dims), which amplifies last-bit differences
    assert merged["metrics"]["ode_rmse"] == pytest.approx(ref["metrics"]["ode_rmse"], rel=1e-12)
    assert merged["metrics"]["fd_pixel"] == pytest.approx(ref["metrics"]["fd_pixel"], rel=1e-6)
    with np.load(out.parent / "metric_state.npz") as a, np.load(single / "metric_state.npz") as b:
        assert set(a.files) == set(b.files)
        for k in a.files:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-11, atol=1e-11, err_msg=k)
    assert not list(shards.rglob("*.tmp"))
    # merging again rewrites the same record and never treats the merged one as a shard
    assert merge_main([str(shards)]) == 0
    assert len(list((shards / "merged").glob("*/record.json"))) == 1


def _shard(lo, hi, counted=6):
    return {"samples": {"index_range": [lo, hi]}, "nfe": {"counted": counted}, "_path": f"s{lo}/record.json"}


def test_overlaps_gaps_and_mismatched_nfe_are_errors():
    assert check_ranges([_shard(0, 10), _shard(10, 30)]) == (0, 30)
    with pytest.raises(NfebenchError, match=r"overlap: \[0, 10\) and \[5, 20\)"):
        check_ranges([_shard(0, 10), _shard(5, 20)])
    with pytest.raises(NfebenchError, match=r"gap: \[10, 12\)"):
        check_ranges([_shard(0, 10), _shard(12, 20)])
    with pytest.raises(NfebenchError, match="different NFE"):
        check_ranges([_shard(0, 10), _shard(10, 20, counted=5)])


def test_merge_cli_bad_input_is_one_line(tmp_path, capsys):
    assert merge_main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"nfebench: error: not a directory: {tmp_path / 'missing'}\n"
    assert merge_main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "merged").exists()


def test_run_level_set_up_adds_up_over_shards():
    """dlg's persistent chains: each shard burned in (and replayed) its chains, so the merged set-up is the sum."""
    from results.merge import merged_nfe

    parts = [{"requested": 20, "counted": 20, "setup": {"row_evals": 120, "network_evals": 40, "nfe_per_sample": 1.2},
              "amortized_per_sample": 21.2},
             {"requested": 20, "counted": 20, "setup": {"row_evals": 300, "network_evals": 60, "nfe_per_sample": 3.0},
              "amortized_per_sample": 23.0}]
    got = merged_nfe(parts, 200)
    assert got["setup"] == {"row_evals": 420, "network_evals": 100, "nfe_per_sample": 2.1}
    assert got["amortized_per_sample"] == pytest.approx(22.1) and got["counted"] == 20
    assert merged_nfe([{"requested": 6, "counted": 6}], 60) == {"requested": 6, "counted": 6}
