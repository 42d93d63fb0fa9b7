"""Skip-complete: runs are found by config hash, not directory; incomplete records never count."""
import json

from launch.records import config_hash
from hydra_plugins.nfebench_launchers.resume import find_complete, identity

CFG = {"model": {"family": "gaussian"}, "solver": {"name": "ddim"}, "nfe": 5, "seed": 0, "skip_complete": True}


def _record(path, cfg, status="complete"):
    path.mkdir(parents=True)
    (path / "record.json").write_text(json.dumps({"status": status, "config_hash": config_hash(identity(cfg)),
                                                  "config": cfg, "model": {}, "solver": {}, "nfe": {}, "samples": {},
                                                  "metrics": {}, "timing": {}}))
    return str(path / "record.json")


def test_complete_run_is_found_by_config_hash_whatever_the_directory(tmp_path):
    where = _record(tmp_path / "renamed" / "anything", CFG)
    assert find_complete(CFG, tmp_path) == where
    # how a run is run (skip flag, tracking) is not part of its identity
    assert find_complete({**CFG, "skip_complete": False}, tmp_path) == where
    assert find_complete({**CFG, "wandb": {"mode": "offline"}}, tmp_path) == where


def test_other_configs_and_incomplete_records_are_not_found(tmp_path):
    _record(tmp_path / "a", CFG)
    assert find_complete({**CFG, "nfe": 10}, tmp_path) is None
    assert find_complete({**CFG, "seed": 1}, tmp_path) is None
    _record(tmp_path / "b", {**CFG, "nfe": 20}, status="failed")
    assert find_complete({**CFG, "nfe": 20}, tmp_path) is None
    assert find_complete(CFG, tmp_path / "missing") is None


def test_corrupt_records_are_moved_aside_once_and_never_found(tmp_path, capsys):
    good = _record(tmp_path / "good", CFG)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "record.json").write_text('{"status": "comp')
    assert find_complete(CFG, tmp_path) == good
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("nfebench: warning: corrupt record ") and "bad/record.json" in err[0]
    assert [p.name.split("-")[0] for p in (tmp_path / "bad").iterdir()] == ["record.json.corrupt"]
    assert find_complete(CFG, tmp_path) == good and capsys.readouterr().err == ""


def test_load_record_errors_name_the_file_in_one_line(tmp_path):
    import pytest

    from launch.records import load_record
    from common.errors import NfebenchError

    p = tmp_path / "record.json"
    for text, why in (("{\"status\": ", "not JSON"), ("[1, 2]", "not a JSON object"),
                      ('{"status": "complete"}', "missing keys: config, config_hash")):
        p.write_text(text)
        with pytest.raises(NfebenchError, match=why) as e:
            load_record(p)
        assert str(p) in str(e.value) and "\n" not in str(e.value)
