"""DPM-Solver (Lu et al. 2022a): the noise-prediction exponential integrator, orders 1-3.

``method: singlestep`` is the paper's DPM-Solver-1/2/3 (Alg. 1-2) with its DPM-Solver-fast split
of the NFE budget into orders and the log-SNR outer-grid rule (``outer_grid``, singlestep.py);
``method: multistep`` is the eps-form multistep solver of Lu et al. 2022b (diffusers'
``algorithm_type="dpmsolver"``). Same code as DPM-Solver++ (dpmpp.py) in the eps form.
NFE = steps for both (the singlestep grid has one point per evaluation).
"""
from __future__ import annotations

from ..registry import register_solver
from .dpmpp import describe_exp, sample_exp


def _describe(steps, method="singlestep", order=3, lower_order_final="below_10", outer_grid="logsnr", **_):
    return describe_exp(steps, method, order, lower_order_final, outer_grid)


@register_solver("dpm_solver", describe=_describe)
def sample_dpm_solver(model, x, ts, noise, rng=None, method="singlestep", order: int = 3,
                      lower_order_final="below_10", outer_grid="logsnr"):
    return sample_exp("eps", model, x, ts, noise, method, order, lower_order_final, outer_grid)
