"""UniPC (Zhao et al. 2023), data prediction, orders 1-3, B(h) variants bh1 (B = h) and bh2 (B = e^h - 1).

Predictor UniP-p: x~_{k+1} = sigma_{k+1}/sigma_k x_k + alpha_{k+1} (1 - e^{-h}) m_k - alpha_{k+1} B(h) sum_i a_i D_i
with D_i = (m_{k-i} - m_k)/r_i and a solving R a = b on the past nodes (a = 1/2 for p = 2, as the reference).
Corrector UniC: after evaluating m_{k+1} at x~_{k+1}, the same update from x_k also uses
D_{k+1} = m_{k+1} - m_k, raising the order by one at no cost: the evaluation is reused by the next
predictor (taken at the uncorrected x~, as the reference). No corrector after the last step, so NFE = steps.
"""
from __future__ import annotations

from collections import deque

from common.registry import check_choice
from ..registry import register_solver
from .multistep import combine
from .orders import describe_multistep
from .unic import B_FUNCTIONS, fused_plan


def _describe(steps, order=3, variant="bh1", lower_order_final="always", corrector=True, **_):
    corrector_steps = max(steps - 1, 0) if corrector else 0
    return {**describe_multistep(steps, order, lower_order_final), "corrector_steps": corrector_steps}


@register_solver("unipc", describe=_describe)
def sample_unipc(model, x, ts, noise, rng=None, order: int = 3, variant="bh1", lower_order_final="always",
                 corrector: bool = True):
    t, steps = fused_plan(noise, ts, int(order), check_choice("unipc variant", variant, B_FUNCTIONS),
                          lower_order_final, bool(corrector))
    history = deque(maxlen=4)  # predictions, newest first
    for k, (keep, w) in enumerate(steps):
        history.appendleft(model(x, t[k]))
        # x~_{k+1} = keep_k x~_k + sum_j w_j m_{k-j}: UniC of step k-1 and UniP of step k in one combination
        x = combine(keep, x, w, history)
    return x
