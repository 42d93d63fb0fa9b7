"""Singlestep DPM-Solver blocks (Lu et al. 2022a, Alg. 1-2; DPM-Solver++(2S), Lu et al. 2022b, Alg. 1).

A budget of n evaluations is split into blocks by the paper's DPM-Solver-fast rule: order 3
uses K = n//3 + 1 blocks, orders [3]*(K-2)+[2,1] if 3 | n, [3]*(K-1)+[1] if n = 3m+1, else
[3]*(K-1)+[2]; order 2 uses [2]*(n/2), or [2]*(n//2)+[1] for odd n. So every budget n >= 1 is
spent exactly (n = 1, 2 degrade to DPM-Solver-1/2 deliberately).

Where the blocks sit is the ``outer_grid`` option:
  logsnr: the paper's rule: K+1 outer points uniform in log-SNR between the grid's ends, and the
          intermediate points at r = 1/2 (order 2) or r = 1/3, 2/3 (order 3) of each block in lambda;
          the configured grid contributes only its ends.
  fine:   every evaluation sits on the configured grid of n steps: block ends are the grid points
          at the cumulative orders and intermediate points are the grid points in between
          (diffusers' DPMSolverSinglestepScheduler convention).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.registry import check_choice
from .expint import check_form, lagrange_weights, step_between
from .grid import grid_coeffs, per_run
from .multistep import combine

OUTER_GRIDS = ("logsnr", "fine")
FRACTIONS = {1: [], 2: [0.5], 3: [1 / 3, 2 / 3]}


def fast_orders(n: int, order: int) -> list[int]:
    if check_choice("singlestep order", order, (1, 2, 3)) == 1:
        return [1] * n
    if order == 2:
        return [2] * (n // 2) + [1] * (n % 2)
    k = n // 3 + 1
    return {0: [3] * (k - 2) + [2, 1], 1: [3] * (k - 1) + [1], 2: [3] * (k - 1) + [2]}[n % 3]


@dataclass(frozen=True)
class Point:
    t: float
    alpha: float
    sigma: float
    lam: float


@dataclass(frozen=True)
class Block:
    points: list   # evaluation points: block start, then intermediates
    stages: list   # (keep, weights on predictions so far); one per intermediate, then the block end


def _point(noise, lam):
    t = float(noise.t_of_lam(lam))
    return Point(t, float(noise.alpha(t)), float(noise.sigma(t)), float(lam))


def _block(form, pts, end) -> Block:
    """pts: start + intermediate points; end: the block's target point."""
    s, order = pts[0], len(pts)
    st = [step_between(form, (s.alpha, s.sigma, s.lam), (p.alpha, p.sigma, p.lam)) for p in pts[1:] + [end]]
    r = [(p.lam - s.lam) / (end.lam - s.lam) for p in pts[1:]]
    if order == 1:
        stages = [(st[0].keep, [st[0].scale * st[0].E(1)])]
    elif order == 2:  # midpoint form: the paper's DPM-Solver-2 / DPM-Solver++(2S)
        a = st[1].scale * st[1].E(1)
        stages = [(st[0].keep, [st[0].scale * st[0].E(1)]),
                  (st[1].keep, [a * (1 - 0.5 / r[0]), a * 0.5 / r[0]])]
    else:  # DPM-Solver-3: the second and last stages integrate the line through (s, latest point)
        w2 = lagrange_weights(st[1], [0.0, r[0] / r[1]])
        w3 = lagrange_weights(st[2], [0.0, r[1]])
        stages = [(st[0].keep, [st[0].scale * st[0].E(1)]), (st[1].keep, w2), (st[2].keep, [w3[0], 0.0, w3[1]])]
    return Block(pts, stages)


@per_run
def plan_blocks(noise, ts, form: str, order: int, outer_grid: str) -> list[Block]:
    g = grid_coeffs(noise, ts)
    n = len(g.t) - 1
    orders = fast_orders(n, order)
    if check_choice("outer_grid", outer_grid, OUTER_GRIDS) == "fine":
        pts = [Point(g.t[i], g.alpha[i], g.sigma[i], g.lam[i]) for i in range(n + 1)]
        ends = np.cumsum([0] + orders)
        blocks = [_block(form, pts[a:b], pts[b]) for a, b in zip(ends[:-1], ends[1:])]
    else:
        lams = np.linspace(g.lam[0], g.lam[-1], len(orders) + 1)
        outer = [Point(g.t[0], g.alpha[0], g.sigma[0], g.lam[0])] + [_point(noise, l) for l in lams[1:-1]] + \
                [Point(g.t[-1], g.alpha[-1], g.sigma[-1], g.lam[-1])]
        blocks = []
        for k, o in enumerate(orders):
            s, e = outer[k], outer[k + 1]
            inner = [_point(noise, s.lam + f * (e.lam - s.lam)) for f in FRACTIONS[o]]
            blocks.append(_block(form, [s] + inner, e))
    return blocks


def run_stages(model, x, blocks, pred, on_inputs: bool = False):
    """pred(model, x, point) -> the prediction in the blocks' form. Each stage starts from the block's start xs:
    x = keep xs + sum_i w_i m_i over the predictions m_i of the block so far, or with ``on_inputs`` over the
    block's later stage inputs x_1, ..., x_j, then its predictions (eps_blocks_on_data)."""
    for blk in blocks:
        xs, inputs, preds = x, [], []
        for pt, (keep, w) in zip(blk.points, blk.stages):
            preds.append(pred(model, x, pt))
            x = combine(keep, xs, w, inputs + preds)
            if on_inputs:
                inputs.append(x)
    return x


def run_blocks(model, x, blocks, pred):
    """run_stages on the predictions alone."""
    return run_stages(model, x, blocks, pred)


@per_run
def eps_blocks_on_data(noise, ts, order: int, outer_grid: str) -> list[Block]:
    """The eps-form blocks rewritten on the stage inputs x_i and data predictions D_i (eps_i = (x_i - alpha_i D_i)
    / sigma_i): each stage is (keep, weights on x_1, ..., x_j, D_0, ..., D_j), x_0 being the block start that
    ``keep`` multiplies, so no eps is ever formed."""
    out = []
    for b in plan_blocks(noise, ts, "eps", order, outer_grid):
        stages = []
        for keep, ws in b.stages:
            on_x = [w / p.sigma for w, p in zip(ws, b.points)]
            stages.append((keep + on_x[0], on_x[1:] + [-w * p.alpha for w, p in zip(on_x, b.points)]))
        out.append(Block(b.points, stages))
    return out


def _x0(model, x, point):
    return model(x, point.t)


def sample(form, model, x, ts, noise, order, outer_grid):
    if check_form(form) == "eps":
        return run_stages(model, x, eps_blocks_on_data(noise, ts, int(order), outer_grid), _x0, on_inputs=True)
    return run_stages(model, x, plan_blocks(noise, ts, form, int(order), outer_grid), _x0)


def describe(steps, order, outer_grid):
    orders = fast_orders(steps, int(order))
    return {"block_orders": orders, "outer_steps": len(orders), "outer_grid": outer_grid}
