"""diffusers' scheduler.step loop for the methods nfebench shares with it, configured to match."""
from __future__ import annotations

from dataclasses import dataclass

from .planning import NFE


@dataclass(frozen=True)
class DiffusersMatch:
    """diffusers' scheduler for the same method: class, constructor arguments (besides the betas,
    which are diffusers' defaults = the near-free model's schedule), num_inference_steps for ~NFE
    model calls, and the prediction_type the near-free output is declared as."""
    scheduler: str
    kwargs: dict
    steps: int
    prediction: str = "sample"
    step_kwargs: tuple = ()
    note: str = ""


DIFFUSERS = {
    "ddim": DiffusersMatch("DDIMScheduler", {}, NFE, step_kwargs=(("eta", 0.0),)),
    "ddpm": DiffusersMatch("DDPMScheduler", {"variance_type": "fixed_small"}, NFE, step_kwargs=(("generator", None),)),
    "dpmpp": DiffusersMatch("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, NFE),
    "dpm_solver": DiffusersMatch("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver", "solver_order": 3,
                                                                 "final_sigmas_type": "sigma_min"}, NFE,
                                 note="diffusers' eps-form DPM-Solver takes no final_sigmas_type='zero'"),
    "dpmpp_sde": DiffusersMatch("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
                                NFE, step_kwargs=(("generator", None),)),
    "unipc": DiffusersMatch("UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1", "predict_x0": True},
                            NFE),
    "deis": DiffusersMatch("DEISMultistepScheduler", {"solver_order": 3}, NFE,
                           note="diffusers' DEIS is the log-rho basis; nfebench's default is the paper's t basis"),
    "euler": DiffusersMatch("EulerDiscreteScheduler", {"use_karras_sigmas": True}, NFE),
    "heun": DiffusersMatch("HeunDiscreteScheduler", {"use_karras_sigmas": True}, NFE // 2),
    "pndm": DiffusersMatch("PNDMScheduler", {"skip_prk_steps": True}, NFE - 1, prediction="epsilon",
                           note="PNDMScheduler takes no x0 prediction: both sides read x * 0.5 as eps here"),
}


def make_scheduler(match: DiffusersMatch):
    import warnings

    import diffusers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # algorithm_type='dpmsolver' is deprecated but runs
        return getattr(diffusers, match.scheduler)(prediction_type=match.prediction, **match.kwargs)


def diffusers_loop(sched, match: DiffusersMatch, x, gen):
    """A pipeline's denoising loop after set_timesteps: scale_model_input, the model, scheduler.step."""
    kw = {k: (gen if k == "generator" else v) for k, v in match.step_kwargs}
    for t in sched.timesteps:
        out = sched.scale_model_input(x, t) * 0.5
        x = sched.step(out, t, x, return_dict=False, **kw)[0]
    return x


def diffusers_nfe(sched, match: DiffusersMatch) -> int:
    sched.set_timesteps(match.steps)
    return len(sched.timesteps)


def diffusers_draws(sched, match: DiffusersMatch, x) -> int:
    """How many batch-sized Gaussian draws one diffusers loop makes: torch.randn (what diffusers'
    randn_tensor calls) counted while the loop runs once, untimed."""
    import torch

    real, count = torch.randn, [0]

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        count[0] += out.numel() == x.numel()
        return out

    torch.randn = counting
    try:
        sched.set_timesteps(match.steps)
        diffusers_loop(sched, match, x.clone(), torch.Generator().manual_seed(0))
    finally:
        torch.randn = real
    return count[0]
