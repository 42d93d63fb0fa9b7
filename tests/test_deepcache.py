"""DeepCache (models/deepcache.py) as `model.deepcache` on diffusers UNet2DModels, on the committed digits_unet."""
import json
import math

import pandas as pd

import pytest
import torch

from launch.run import load_model
from models.counter import CountedDenoiser
from models.deepcache import full_calls
from models.registry import build_model
from results.collect import main as collect_main
from common.errors import NfebenchError

from helpers import compose_cfg, launch, run_module, sampled

pytestmark = pytest.mark.usefixtures("one_thread")


def samples(*overrides, num_samples=6, batch_size=6):
    cfg = compose_cfg("model=digits_unet", "metrics=none", f"num_samples={num_samples}", f"batch_size={batch_size}",
                      *overrides)
    return sampled(cfg, load_model(cfg))  # DeepCache's schedule of full and partial calls is the host's: no sync


def test_interval_1_is_bit_identical_to_the_plain_network():
    plain, plain_stats = samples("solver=dpmpp", "nfe=8")
    for opts in ("{interval:1,branch:0}", "{interval:1,branch:2,skip_type:quad}"):
        cached, stats = samples("solver=dpmpp", "nfe=8", f"model.deepcache={opts}")
        assert torch.equal(cached, plain)
        assert stats.compute["macs_total"] == plain_stats.compute["macs_total"]


@pytest.mark.parametrize("branch", [0, 1, 2])
def test_a_partial_call_on_the_input_of_the_full_call_before_it_reproduces_it(branch):
    # The partial path (shallow down blocks, cached h, up blocks from the branch on) recomputes exactly
    # what the full forward computed around the cached feature: same input, same output.
    cfg = compose_cfg("model=digits_unet", f"model.deepcache={{interval:2,branch:{branch}}}")
    model = load_model(cfg)
    counter = CountedDenoiser(model, None, calls=4)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = counter(x, 0.4)
        partial = counter(x, 0.4)
        other = counter(x, 0.7)  # call 2: full again (uniform, interval 2)
    assert [c[2] for c in counter.calls_by] == ["full", "partial"] and list(counter.calls_by.values()) == [2, 1]
    torch.testing.assert_close(partial, full, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(other, full)


def conv(cout, cin, k, h, w):
    return cout * cin * k * k * h * w


def resnet(cin, cout, h, w, temb=128):
    # conv1, conv2, the time-embedding projection, and a 1x1 shortcut when the channels change
    return conv(cout, cin, 3, h, w) + conv(cout, cout, 3, h, w) + temb * cout + (conv(cout, cin, 1, h, w) if cin != cout else 0)


def test_macs_of_full_and_partial_calls_match_a_hand_count_of_digits_unet():
    # digits_unet (models/digits_unet/config.json): 1x8x8 input, block_out_channels [32, 32], one resnet per
    # down block (DownBlock2D x2), two per up block (UpBlock2D x2), a mid block with one attention (4 heads
    # of 8), time embedding 32 -> 128 -> 128. Skips: s0 conv_in (8x8), s1 down resnet (8x8), s2 downsampler
    # (4x4), s3 down resnet (4x4); up resnets consume s3, s2 (4x4), upsample, then s1, s0 (8x8).
    temb = 32 * 128 + 128 * 128
    conv_in, conv_out = conv(32, 1, 3, 8, 8), conv(1, 32, 3, 8, 8)
    down = resnet(32, 32, 8, 8) + conv(32, 32, 3, 4, 4) + resnet(32, 32, 4, 4)
    attention = 4 * 16 * 32 * 32 + 2 * 16 * 16 * 32  # q, k, v, out projections on 16 tokens; QK^T and AV
    mid = 2 * resnet(32, 32, 4, 4) + attention
    up = 2 * resnet(64, 32, 4, 4) + conv(32, 32, 3, 8, 8) + 2 * resnet(64, 32, 8, 8)
    full = temb + conv_in + down + mid + up + conv_out
    # branch 0: conv_in and the first down resnet (s1), then the up resnets consuming s1 and s0
    partial = temb + conv_in + resnet(32, 32, 8, 8) + 2 * resnet(64, 32, 8, 8) + conv_out
    assert (full, partial) == (7725056, 5050368)  # the sums above, written out

    _, stats = samples("solver=ddim", "nfe=9", "model.deepcache={interval:3,branch:0}", num_samples=4, batch_size=4)
    by_kind = {c["kind"]: c for c in stats.compute["macs_per_call"]}
    assert by_kind["full"]["macs_per_call"] == 4 * full and by_kind["partial"]["macs_per_call"] == 4 * partial
    assert (by_kind["full"]["calls"], by_kind["partial"]["calls"]) == (3, 6) and stats.counted == 9  # NFE counts all
    assert stats.compute["macs_total"] == 4 * (3 * full + 6 * partial)


def test_samples_depend_only_on_seed_and_index_not_on_batch_size():
    opts = ("solver=ddim", "nfe=7", "model.deepcache={interval:3,branch:1,skip_type:quad}")
    whole, _ = samples(*opts, num_samples=6, batch_size=6)
    split, stats = samples(*opts, num_samples=6, batch_size=4)  # batches of 4 and 2: the cache restarts per batch
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)
    assert sorted(c["shape"][0] for c in stats.compute["macs_per_call"]) == [2, 2, 4, 4]
    plain, _ = samples("solver=ddim", "nfe=7", num_samples=6, batch_size=6)
    assert (whole - plain).abs().max() > 1e-3  # the cache does change the samples


def test_quad_places_full_calls_as_the_reference():
    # Golden: horseee/DeepCache DeepCache/sd/pipeline_stable_diffusion.py sample_from_quad(N, ceil(N/interval),
    # pow), run once on CPU (numpy 2) for these arguments; it lowers pow in 0.02 steps until the picks are distinct.
    golden = {(10, 3, 1.5): [0, 1, 3, 6], (20, 2, 1.5): [0, 1, 2, 4, 6, 8, 10, 12, 14, 17],
              (50, 5, 1.4): [0, 1, 5, 9, 13, 18, 24, 30, 36, 43], (100, 10, 1.5): [0, 3, 8, 16, 25, 35, 46, 58, 71, 85]}
    for (n, interval, p), want in golden.items():
        assert sorted(full_calls(n, interval, "quad", p)) == want
        assert len(want) == math.ceil(n / interval)
    assert sorted(full_calls(10, 3, "uniform", 1.5)) == [0, 3, 6, 9] and full_calls(None, 3, "uniform", 1.5) is None


@pytest.mark.parametrize("override, message", [
    ("model.deepcache={interval:0,branch:0}", "model.deepcache.interval must be an integer >= 1; got 0"),
    ("model.deepcache={interval:2,branch:3}", "model.deepcache.branch must lie in [0, 2] for this UNet (4 skip branches); got 3"),
])
def test_bad_options_fail_in_one_line_and_write_no_record(tmp_path, override, message):
    r = launch("model=digits_unet", "solver=ddim", "nfe=4", "num_samples=2", "metrics=none", override,
               f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2 and r.stderr.strip() == "nfebench: error: " + message
    assert not (tmp_path / "record.json").exists()


@pytest.mark.parametrize("opts, message", [
    ({"interval": 2, "depth": 1}, "model.deepcache: unknown option(s) depth; valid: branch, interval, pow, skip_type"),
    ({"interval": 2, "skip_type": "cubic"}, "unknown model.deepcache.skip_type 'cubic'; valid: uniform, quad"),
    ({"interval": 2, "branch": -1}, "model.deepcache.branch must be an integer >= 0; got -1"),
    ({"interval": 2, "skip_type": "quad", "pow": 0.5}, "model.deepcache.pow must be a number >= 1; got 0.5"),
    ([2, 0], "model.deepcache must be a mapping {interval, branch, skip_type, pow}; got [2, 0]"),
])
def test_every_bad_option_is_named_before_the_checkpoint_loads(opts, message):
    cfg = compose_cfg("model=digits_unet")["model"]
    with pytest.raises(NfebenchError) as err:
        build_model({**cfg, "deepcache": opts, "path": "/nonexistent"})  # the options fail before the load
    assert str(err.value) == message


def test_a_model_without_a_unet2dmodel_refuses_deepcache(tmp_path):
    r = launch("model=gaussian", "solver=ddim", "nfe=4", "num_samples=2", "+model.deepcache={interval:2}",
               f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2 and r.stderr.strip() == (
        "nfebench: error: model.deepcache needs a diffusers UNet2DModel (model families diffusers_unet, "
        "diffusers_ldm); this model's family is 'gaussian'")
    assert not (tmp_path / "record.json").exists()


@pytest.mark.slow
def test_a_deepcache_sweep_records_its_macs_and_the_collector_tabulates_and_plots_them(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    r = launch("-m", "model=digits_unet", "solver=ddim", "nfe=6", "num_samples=8", "metrics=digits_fd",
               "model.deepcache=null,{interval:2,branch:0}", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    recs = {bool(rec["model"].get("deepcache")): rec
            for rec in (json.loads(p.read_text()) for p in sweep.glob("*/record.json"))}
    plain, cached = recs[False], recs[True]
    assert plain["nfe"]["counted"] == cached["nfe"]["counted"] == 6
    assert cached["model"]["deepcache"] == {"interval": 2, "branch": 0, "skip_type": "uniform"}
    assert cached["compute"]["macs_total"] < plain["compute"]["macs_total"]
    assert cached["compute"]["macs_per_sample"] == cached["compute"]["macs_total"] / 8
    assert {c["kind"]: c["calls"] for c in cached["compute"]["macs_per_call"]} == {"full": 3, "partial": 3}

    csv = tmp_path / "t.csv"
    assert collect_main([str(sweep), "--format", "csv", "--x", "macs", "--plot", str(tmp_path / "p.png"),
                         "--out", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert sorted(table["macs_per_sample"]) == sorted(rec["compute"]["macs_per_sample"] for rec in (cached, plain))
    assert set(table["solver"]) == {"ddim", "ddim(model.deepcache.branch=0, model.deepcache.interval=2)"}
    assert (tmp_path / "p.png").stat().st_size > 0
    assert collect_main([str(sweep), "--x", "macs"]) == 0
    out, err = capsys.readouterr()
    assert " @ " in out and "deepcache" in out, out + err
    assert collect_main([str(sweep), "--x", "flops"]) == 2
    assert capsys.readouterr().err == "nfebench: error: unknown --x 'flops'; valid: nfe, macs\n"

    # the leaderboard renderer: a MACs column, and the cached rows beside the plain ones in their own table
    out = tmp_path / "board"
    r = run_module("results.leaderboard", "render", str(sweep), "--out", str(out))
    assert r.returncode == 0, r.stderr
    board = pd.read_csv(out / "leaderboard.csv")
    assert set(board["model"]) == {"digits_unet", "digits_unet+deepcache"}
    assert sorted(board["macs_per_sample"]) == sorted(round(rec["compute"]["macs_per_sample"]) for rec in (cached, plain))
    readme = (out / "README.md").read_text()
    section = readme[readme.index("## `digits_unet` with DeepCache: `fd_digits` against MACs"):]
    assert "| ddim | 6 |" in section and "| ddim+deepcache(interval=2,branch=0) | 6 |" in section


def test_the_partial_path_matches_the_full_forward_through_attention_blocks_at_every_branch():
    # cifar10_ddpm-like block types (attention in down and up blocks), two resnets per block: 6 skips
    # (conv_in, 2 resnets + downsampler, 2 resnets) and 6 up resnets
    from diffusers import UNet2DModel

    from models.deepcache import DeepCache

    torch.manual_seed(0)
    net = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=2,
                      down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                      norm_num_groups=4, attention_head_dim=4).eval()
    with torch.no_grad():
        for p in net.parameters():  # diffusers zero-initialises some layers: make every path matter
            p.add_(0.1 * torch.randn_like(p))
    x, steps = torch.randn(2, 3, 8, 8), torch.full((2,), 500.0)
    with torch.no_grad():
        plain = net(x, steps).sample
        for branch in range(5):
            cache = DeepCache(net, interval=2, branch=branch)
            cache.start(4)
            kinds = [cache.kind(x)]
            full = cache(x, steps)
            kinds.append(cache.kind(x))
            partial = cache(x, steps)
            assert kinds == ["full", "partial"] and torch.equal(full, plain)
            torch.testing.assert_close(partial, full, rtol=1e-5, atol=1e-5)
        with pytest.raises(NfebenchError, match=r"branch must lie in \[0, 4\]"):
            DeepCache(net, interval=2, branch=5)


def test_the_ldm_unet_caches_in_latent_space(tmp_path):
    from test_models_pretrained import save_checkpoint

    path = save_checkpoint("celebahq_ldm", tmp_path)
    common = (f"model.path={path}", "solver=ddim", "nfe=4", "num_samples=2", "batch_size=2", "metrics=none")
    runs = {}
    for opts in ("null", "{interval:1,branch:0}", "{interval:2,branch:1}"):
        cfg = compose_cfg("model=celebahq_ldm", *common, f"model.deepcache={opts}")
        runs[opts] = sampled(cfg, load_model(cfg))
    assert torch.equal(runs["{interval:1,branch:0}"][0], runs["null"][0])
    x, stats = runs["{interval:2,branch:1}"]
    assert x.shape == (2, 3, 256, 256) and bool(torch.isfinite(x).all()) and stats.counted == 4
    assert {c["kind"]: c["calls"] for c in stats.compute["macs_per_call"]} == {"full": 2, "partial": 2}
    assert stats.compute["macs_total"] < runs["null"][1].compute["macs_total"]
