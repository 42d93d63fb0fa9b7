"""The bench's arithmetic and checks (launch/bench/), never its timings: the speed goals are measured by
`make bench` into results/bench/, not asserted here."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from common.paths import REPO
from launch.bench import fusion
from launch.bench.loop import loop_share
from launch.bench.report import Goal, goal_table, interleaved, median_ratio, round_ratios
from launch.bench.diffusers_loops import DIFFUSERS, diffusers_draws, diffusers_nfe, make_scheduler
from launch.bench.ops import count_passes
from launch.bench.outputs import REFERENCE, compare_outputs, current_outputs, load_reference
from launch.bench.planning import NFE, Case, NearFree, compose, draws_per_batch, is_stochastic, noise_schedule, \
    passes_per_batch, run_solver, solver_names
from sampling.seeds import SampleNoise
from launch.bench.solvers import floor, floor_coefficients, over_op_bound, without_noise


def test_ratios_are_per_round_then_median_and_scale_by_nfe():
    # round 3 is slow for both sides: its ratio is unaffected; round 4's contender alone is slow
    num, den = [2.0, 4.0, 20.0, 9.0], [1.0, 2.0, 10.0, 1.0]
    assert round_ratios(num, den) == [2.0, 2.0, 2.0, 9.0]
    assert median_ratio(num, den) == 2.0
    # per NFE: the contender spent 2 NFE per call, the reference 1
    assert median_ratio(num, den, num_scale=2.0, den_scale=1.0) == 1.0
    assert median_ratio([3.0, 1.0, 2.0], [1.0, 1.0, 1.0]) == 2.0
    with pytest.raises(ValueError, match="same, non-zero number of rounds"):
        round_ratios([1.0, 2.0], [1.0])


def test_interleaved_runs_each_contender_once_per_round_in_rotated_order():
    calls = []

    def contender(name):
        def prepare():
            return lambda: calls.append(name)
        return prepare

    times = interleaved({n: contender(n) for n in "abc"}, rounds=3, warmup=1)
    assert {n: len(t) for n, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    rounds = [calls[i:i + 3] for i in range(0, len(calls), 3)]
    assert rounds == [list("abc"), list("bca"), list("cab"), list("abc")]  # warm-up round first, not recorded


def test_goal_table_marks_met_not_met_and_not_measured():
    goals = [Goal("solvers <= 1.5x floor", 1.2, 1.5), Goal("share <= 5%", 7.5, 5.0, unit="%"),
             Goal("boundary", 1.5, 1.5), Goal("rss", None, 1.1, why_not_measured="quick mode")]
    assert [g.status for g in goals] == ["met", "NOT MET", "met", "not measured"]
    table = goal_table(goals)
    assert table[2] == "| solvers <= 1.5x floor | 1.2x | 1.5x | met |"
    assert table[3] == "| share <= 5% | 7.5% | 5% | NOT MET |"
    assert table[5] == "| rss | – (quick mode) | 1.1x | not measured |"


def test_output_check_catches_a_changed_or_missing_output():
    ref = {"dpmpp|float32": np.ones((2, 3), np.float32), "dpmpp|float64": np.ones((2, 3)),
           "ddim|float32": np.zeros((2, 3), np.float32)}
    same = {k: v.copy() for k, v in ref.items()}
    same["dpmpp|float32"][0, 0] += 3e-7  # a reordering of float32 arithmetic: still the same samples
    assert all(r["same"] for r in compare_outputs(ref, same))
    changed = {k: v.copy() for k, v in ref.items()}
    changed["dpmpp|float64"][1, 2] += 1e-8  # far below float32 noise, but float64 must agree to 1e-10
    del changed["ddim|float32"]
    rows = {r["output"]: r for r in compare_outputs(ref, changed)}
    assert not rows["dpmpp|float64"]["same"] and rows["dpmpp|float64"]["max_abs_diff"] == pytest.approx(1e-8)
    assert not rows["ddim|float32"]["same"] and rows["ddim|float32"]["max_abs_diff"] is None
    assert rows["dpmpp|float32"]["same"]
    reshaped = {**ref, "dpmpp|float32": np.ones((3, 2), np.float32)}
    assert not {r["output"]: r for r in compare_outputs(ref, reshaped)}["dpmpp|float32"]["same"]


def test_committed_solver_outputs_still_match_the_solvers():
    """results/bench/solver_outputs.npz was written by `python -m launch.bench --write-reference` from main's
    code at f156065 (before the in-place fast paths); every solver config and variant must still give those
    samples. bdia, hb, hb_dpmpp and ghvb were added to it when they were added (after the fast paths,
    checked there against their reference transcriptions and DDIM/PLMS/DPM-Solver++), and usf, dc_solver and
    dpm_solver_v3 likewise (the calibrated two with the calibration their own Need computes on the bench's
    model: dc's fitted ratios, v3's EMS from the near-free model's Gaussian data). A deliberately
    changed sample must be caught."""
    ref = load_reference(REFERENCE)
    rows = compare_outputs(ref, current_outputs(noise_schedule()))
    assert {r["output"].split("|")[0] for r in rows} >= set(solver_names())
    assert [r["output"] for r in rows if not r["same"]] == []
    key = "dpmpp|float32"
    tampered = {**ref, key: ref[key] + 1e-3}
    assert [r["output"] for r in compare_outputs(ref, tampered) if not r["same"]] == [key]


def test_floor_is_dpm_solver_pp_2m():
    # The hand-written floor computes what nfebench's dpmpp (2M, no lower-order final step) computes.
    noise = noise_schedule()
    case = Case.plan("dpmpp", compose(["solver=dpmpp", "model=digits_unet", "solver.lower_order_final=never"]),
                     noise, NFE)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours, counter = run_solver(case, NearFree(noise, (2, 4, 4)), x.clone(), None)
    coeffs = floor_coefficients(noise, case.ts)
    assert counter.count == len(coeffs) == NFE
    torch.testing.assert_close(floor(x.clone(), coeffs), ours, rtol=0, atol=1e-12)
    other = Case.plan("dpmpp", compose(["solver=dpmpp", "model=digits_unet", "solver.order=1"]), noise, NFE)
    assert (floor(x.clone(), coeffs) - run_solver(other, NearFree(noise, (2, 4, 4)), x.clone(), None)[0]).abs().max() > 1e-3


def test_fused_contender_is_nfebench_ipndm_order_4():
    # The fusion part's hand loop (uncompiled here: the same arithmetic inductor fuses) computes nfebench's
    # ipndm; a wrong weight is caught by the check the part runs before timing.
    noise = noise_schedule()
    case = Case.plan("ipndm", compose(["solver=ipndm", "model=digits_unet", "solver.order=4"]), noise, NFE)
    x = 80 * torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = NearFree(noise, (2, 4, 4))
    coeffs = fusion.step_coefficients(noise, case.ts, dtype=torch.float64)
    assert [len(c) - 2 for c in coeffs] == [1, 2, 3] + [4] * (NFE - 3)  # the warm-up orders
    torch.testing.assert_close(fusion.fused_loop(fusion.ipndm_step, coeffs, x.clone()),
                               run_solver(case, model, x.clone(), None)[0], rtol=0, atol=1e-10)
    assert fusion.check_same_samples(fusion.ipndm_step, case, model, coeffs, x) <= 1e-12
    wrong = [c.clone() for c in coeffs]
    wrong[5][3] *= 1.01
    with pytest.raises(fusion.SamplesDiffer, match="not nfebench's ipndm"):
        fusion.check_same_samples(fusion.ipndm_step, case, model, wrong, x)


def test_fusion_without_a_compiler_is_not_measured_and_says_why(tmp_path, monkeypatch):
    def no_compiler(*args):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")

    monkeypatch.setattr(fusion, "compiled_step", lambda: no_compiler)
    goals = fusion.run(quick=True, out=tmp_path)
    assert [g.status for g in goals] == ["not measured"] * 2
    assert all("No working C++ compiler found" in g.why_not_measured for g in goals)
    assert "| – (torch.compile failed: RuntimeError" in (tmp_path / "fusion.md").read_text()


def test_stochastic_means_the_config_draws_noise_with_its_options():
    # which floor a solver is held to: the plain one, or the one with a batched randn per step
    noise = noise_schedule()
    model = NearFree(noise, (2, 4, 4))

    def drawn(*overrides):
        return is_stochastic(Case.plan("x", compose(["model=digits_unet", *overrides]), noise, NFE), model)

    assert [drawn("solver=ddim"), drawn("solver=ddim", "solver.eta=1.0"), drawn("solver=dpmpp_sde"),
            drawn("solver=euler"), drawn("solver=euler", "solver.S_churn=10", "solver.S_tmax=10")] == \
        [False, True, True, False, True]


def test_diffusers_matches_are_solver_configs_at_the_bench_budget():
    assert set(DIFFUSERS) <= set(solver_names())
    for name, match in DIFFUSERS.items():
        calls = diffusers_nfe(make_scheduler(match), match)
        assert NFE - 1 <= calls <= NFE, (name, calls)


def test_loop_share_reads_the_new_timing_keys():
    # A stand-in record: the runplan change adds timing.sample_s / timing.load_s beside model_s.
    rec = {"timing": {"load_s": 3.0, "sample_s": 10.0, "model_s": 9.6, "total_s": 13.5}}
    assert loop_share(rec) == pytest.approx(0.04)
    assert loop_share({"timing": {"total_s": 14.7, "model_s": 5.1, "rest_s": 9.6}}) is None


def test_bad_part_is_one_error_line():
    r = subprocess.run([sys.executable, "-m", "launch.bench", "solver"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "nfebench: error: unknown bench part 'solver'; valid: solvers, fusion, noise, loop, metrics, sweep"]


def test_gaussian_draws_are_counted_per_side():
    # what the stochastic comparison with diffusers takes out of each side: counted in a run, not assumed
    noise = noise_schedule()
    model = NearFree(noise, (2, 4, 4))
    names = ("ddpm", "dpmpp_sde", "ddim")
    cases = {n: Case.plan(n, compose([f"solver={n}", "model=digits_unet", f"nfe={NFE}"]), noise, NFE) for n in names}
    assert {n: draws_per_batch(c, model) for n, c in cases.items()} == {"ddpm": NFE, "dpmpp_sde": NFE, "ddim": 0}
    x, randn = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0)), torch.randn
    # DDPMScheduler draws nothing at its last timestep (0); nfebench's ddpm ends at t_end > 0 and draws there
    assert {n: diffusers_draws(make_scheduler(DIFFUSERS[n]), DIFFUSERS[n], x) for n in names} == \
        {"ddpm": NFE - 1, "dpmpp_sde": NFE, "ddim": 0}
    assert torch.randn is randn  # the count's patch is undone


def test_without_noise_takes_one_randn_per_counted_draw_from_each_side():
    row = {"nfe": 10, "diffusers_nfe": 10, "draws": 10, "diffusers_draws": 9}
    without_noise(row, [12.0, 14.0, 13.0], [19.0, 19.0, 19.0], [1.0, 1.0, 1.0])
    # per round (12-10)/(19-9), (14-10)/(19-9), (13-10)/(19-9): median 0.3; all but the draws free: 10/19
    assert row["vs_diffusers_without_noise"] == pytest.approx(0.3)
    assert row["noise_bound"] == pytest.approx(10 / 19)


def test_pass_counter_counts_data_touching_ops_on_batch_sized_tensors_only():
    x = torch.randn(4, 3, 2, 2)
    n = x.numel()

    def views(_):
        x.view(-1), x.reshape(4, -1), x.detach(), x[:, 0], x.transpose(0, 1)
        x.unsqueeze(0).expand(2, *x.shape), torch.empty_like(x), x.as_strided((4,), (1,))
        x[:1] * 2  # a quarter of the batch: not a pass over it

    assert count_passes(views, n).total == 0
    c = count_passes(lambda _: (x + 1, x.mul_(1.0), x.sum(), x.clone(), torch.randn(x.shape)), n)
    assert c.total == 4  # add, mul_, a reduction (reads the batch), clone
    assert dict(c.random) == {"aten.randn.default": 1}


def test_pass_counter_counts_what_would_make_the_host_wait_for_a_gpu():
    x = torch.randn(4, 3)
    c = count_passes(lambda _: (x.sum().item(), bool(x.max() > 0), x[x > 0], x.nonzero(), x * 2,
                                x.to("meta", non_blocking=True), x.to("meta")), x.numel())
    assert dict(c.host_reads) == {"aten._local_scalar_dense.default": 2, "aten.index.Tensor": 1,
                                  "aten.nonzero.default": 1, "aten._to_copy.default": 1}
    # the bench's solvers make none (a GPU would wait at each), draws included
    noise = noise_schedule()
    model, x = NearFree(noise, (2, 4, 4)), torch.randn(3, 2, 4, 4)
    for name in ("dpmpp", "ddpm", "time_shift"):
        case = Case.plan(name, compose([f"solver={name}", "model=digits_unet", f"nfe={NFE}"]), noise, NFE)
        assert passes_per_batch(case, model, x)[0].host_reads == {}, name


def test_pass_counter_hides_the_noise_sources_draws():
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    rng = SampleNoise(0, range(2), (3, 2, 2), dtype=torch.float64)  # its draw: per-sample normal_ + a float64 cast
    assert count_passes(lambda r: r.like(x) + x, x.numel(), rng).total == 1
    assert count_passes(lambda _: rng.like(x) + x, x.numel()).total == 2  # the same draw, not hidden: its cast


def test_pass_counts_of_the_floor_and_of_small_solvers_follow_their_update_rules():
    noise = noise_schedule()
    model = NearFree(noise, (2, 4, 4))
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    coeffs = floor_coefficients(noise, Case.plan("dpmpp", compose(["solver=dpmpp", "model=digits_unet"]),
                                                 noise, NFE).ts)
    # per step x * 0.5, mul_, add_ (m_{k-1}), add_ (m_{k-2}, from the second step): 4 per step but the first
    xs = [x.clone(), x.clone()]
    assert count_passes(lambda _: floor(xs[0], coeffs), x.numel()).total == 4 * len(coeffs) - 1
    noisy = count_passes(lambda _: floor(xs[1], coeffs, torch.Generator(), 0.1), x.numel())
    assert (noisy.total, sum(noisy.random.values())) == (5 * len(coeffs) - 1, len(coeffs))  # + the noise's add_
    # ddim: x0 = x * 0.5, then a x + b x0 (mul, add_); ddpm adds sigma z (add_), its draw hidden
    counts = {}
    for name in ("ddim", "ddpm"):
        case = Case.plan(name, compose([f"solver={name}", "model=digits_unet", f"nfe={NFE}"]), noise, NFE)
        passes, nfe = passes_per_batch(case, model, x)
        counts[name] = (passes.total, nfe, dict(passes.random))
    assert counts == {"ddim": (3 * NFE, NFE, {}), "ddpm": (4 * NFE, NFE, {})}


def test_op_bound_footnote_lists_deterministic_solvers_above_the_goal_and_noisy_ones_apart():
    rows = {"a": {"op_bound": 1.6, "stochastic": False}, "b": {"op_bound": 1.5, "stochastic": False},
            "c": {"op_bound": 2.5, "stochastic": False}, "d": {"op_bound": 1.9, "stochastic": True}}
    lines = over_op_bound({"8x8": {"solvers": rows}, "4x4": {"solvers": {"b": rows["b"]}}})
    assert lines[2] == "- At 8x8, op bound above 1.5x (floor goal out of reach at these passes): c 2.50x, a 1.60x; " \
                       "drawing noise: d 1.90x."
    assert lines[3] == "- At 4x4, op bound above 1.5x (floor goal out of reach at these passes): none."
