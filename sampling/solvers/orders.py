"""Which order each step of a multistep solver uses.

Warm-up: step k can use at most k+1 past evaluations. The reference codes disagree on
lowering the order at the end: DPM-Solver lowers it when steps < 10, diffusers when
steps < 15, UniPC always. The rule is an explicit option: "always", "never" or "below_N".
"""
from __future__ import annotations

from common.errors import NfebenchError
from common.registry import check_choice


def lower_order_final_applies(rule, steps: int) -> bool:
    rule = str(rule)
    if rule in ("always", "True", "true"):
        return True
    if rule in ("never", "False", "false"):
        return False
    if rule.startswith("below_") and rule[6:].isdigit():
        return steps < int(rule[6:])
    raise NfebenchError(f"lower_order_final must be always, never or below_N; got '{rule}'")


def multistep_orders(steps: int, order: int, lower_order_final="always") -> list[int]:
    check_choice("multistep order", order, (1, 2, 3))
    lower = lower_order_final_applies(lower_order_final, steps)
    return [min(order, k + 1, steps - k) if lower else min(order, k + 1) for k in range(steps)]


def describe_multistep(steps: int, order, lower_order_final) -> dict:
    """What the run record says about a multistep solver's orders."""
    return {"step_orders": multistep_orders(steps, int(order), lower_order_final),
            "lower_order_final_applied": lower_order_final_applies(lower_order_final, steps)}
