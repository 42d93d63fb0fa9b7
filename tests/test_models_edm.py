"""EDM's published pickles (Karras et al. 2022), read without running their embedded code.

No downloads here: each test writes a miniature pickle in the published layout (a dict whose
'ema' entry is the network, every module pickled as torch_utils.persistence's reconstruct call
carrying module source, class name and __dict__; EasyDict kwargs; training-only loss and
augmentation objects beside it), wrapping tiny random networks, and loads it through the real
model config with model.path. The forward pass is checked against the preconditioning of EDM's
Table 1 written out below, EDM's sampler against a transcription of generate.py's edm_sampler.
"""
from __future__ import annotations

import collections
import hashlib
import io
import math
import os
import pickle
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from launch.run import load_model, plan, sample_batches
from models.edm.precond import PRECONDS
from models.registry import build_model
from common.errors import NfebenchError
from sampling.registry import get_solver
from helpers import CONFIGS, compose_cfg, every_solver_runs, launch
from sampling.seeds import SampleNoise

get_solver("ddim")  # registers every solver
pytestmark = pytest.mark.usefixtures("one_thread")


# ---- writing a pickle in the published layout -------------------------------------------------------------

def _persistence_modules():
    """Stand-ins for NVlabs' torch_utils.persistence / dnnlib.util, only so that pickle can name their globals."""
    pers = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # never called by nfebench's loader
        raise AssertionError("the original reconstruct function ran")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    pers._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict
    return {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": pers,
            "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}


class _Reduced:
    """Pickles as persistence's reconstruct call: (_reconstruct_persistent_obj, (meta,))."""

    def __init__(self, fn, meta):
        self.fn, self.meta = fn, meta

    def __reduce__(self):
        return self.fn, (self.meta,)


NETWORK_SRC = "import torch\n# training/networks.py would be here\n"


def _wrap(module, mods, src, init_kwargs=None, class_name=None):
    state = dict(module.__dict__)
    state["_modules"] = type(state["_modules"])(
        (k, None if m is None else _wrap(m, mods, src)) for k, m in module._modules.items())
    if isinstance(module, torch.nn.ModuleDict):  # a plain torch container, pickled as itself
        md = torch.nn.ModuleDict.__new__(torch.nn.ModuleDict)
        md.__dict__.update(state)
        return md
    state["_init_args"], state["_init_kwargs"] = (), init_kwargs if init_kwargs is not None else {}
    if "skip_scale" in state:
        state["skip_scale"] = np.float64(state["skip_scale"])  # numpy scalars occur in the originals' state
    meta = dict(type="class", version=6, module_src=src, class_name=class_name or type(module).__name__, state=state)
    return _Reduced(mods["torch_utils.persistence"]._reconstruct_persistent_obj, meta)


class _StorageBytes:
    def __init__(self, data):
        self.data = data

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.data,)


class _Torch112Pickler(pickle.Pickler):
    """Tensors as torch 1.12 pickled them (EDM's files date from 2022): _rebuild_tensor_v2 over a typed storage
    saved by torch.save in the legacy (non-zip) format, inside torch.storage._load_from_bytes."""

    def reducer_override(self, obj):
        if isinstance(obj, torch.nn.Parameter):
            return torch._utils._rebuild_parameter, (obj.data, obj.requires_grad, collections.OrderedDict())
        if isinstance(obj, torch.Tensor):
            t = obj.detach().contiguous()
            buf = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TypedStorage is deprecated, but it is what the files hold
                torch.save(t.storage(), buf, _use_new_zipfile_serialization=False)
            return torch._utils._rebuild_tensor_v2, (_StorageBytes(buf.getvalue()), 0, tuple(t.shape), t.stride(),
                                                     False, collections.OrderedDict())
        return NotImplemented


def write_edm_pickle(path, net, kwargs, src=NETWORK_SRC, class_name=None, extra=None):
    mods = _persistence_modules()
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        ez = mods["dnnlib.util"].EasyDict
        loss = _Reduced(mods["torch_utils.persistence"]._reconstruct_persistent_obj,
                        dict(type="class", version=6, module_src="# training/loss.py\n", class_name="EDMLoss",
                             state={"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5}))
        data = {"ema": _wrap(net, mods, src, ez(kwargs), class_name), "loss_fn": loss, "augment_pipe": None,
                "dataset_kwargs": ez(class_name="training.dataset.ImageFolderDataset", path="x.zip"), **(extra or {})}
        buf = io.BytesIO()
        _Torch112Pickler(buf, protocol=4).dump(data)
        Path(path).write_bytes(buf.getvalue())
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return Path(path)


# ---- miniatures of each published network ---------------------------------------------------------------

DDPMPP = dict(model_type="SongUNet", model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16],
              embedding_type="positional", encoder_type="standard", decoder_type="standard", channel_mult_noise=1,
              resample_filter=[1, 1], dropout=0.13)
NCSNPP = dict(model_type="SongUNet", model_channels=16, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[16],
              embedding_type="fourier", encoder_type="residual", decoder_type="standard", channel_mult_noise=2,
              resample_filter=[1, 3, 3, 1], dropout=0.13)
ADM = dict(model_type="DhariwalUNet", model_channels=64, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16])


def precond_kwargs(name: str) -> tuple[str, dict]:
    """(preconditioner class, its constructor kwargs) of a miniature for model config `name`."""
    cfg = compose_cfg(f"model={name}")["model"]
    file = cfg["file"]
    arch = ADM if "adm" in file else NCSNPP if file.endswith("-ve.pkl") else DDPMPP
    cls = ("iDDPMPrecond" if "baseline-imagenet" in file else "EDMPrecond" if file.startswith("edm-")
           else "VEPrecond" if file.endswith("-ve.pkl") else "VPPrecond")
    kw = dict(img_resolution=cfg["resolution"], img_channels=cfg["channels"], label_dim=cfg["label_dim"],
              use_fp16=False, **arch)
    if file.startswith("edm-") and "adm" not in file:
        kw["augment_dim"] = 9  # EDM's CIFAR/FFHQ/AFHQ networks were trained with augmentation labels
    return cls, kw


def random_net(cls, kw, seed=0):
    torch.manual_seed(seed)
    net = PRECONDS[cls](**kw)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name != "u":
                t.copy_(0.1 * torch.randn(t.shape) + (1.0 if name.endswith("norm0.weight") else 0.0))
    return net


def miniature(name, tmp_path, resolution=None, **over):
    cls, kw = precond_kwargs(name)
    kw["img_resolution"] = resolution or kw["img_resolution"]
    net = random_net(cls, kw)
    path = write_edm_pickle(tmp_path / compose_cfg(f"model={name}")["model"]["file"], net, kw, **over)
    return path, net, cls


def golden_inputs(kw):
    """Fixed inputs of the golden-value test: two images at sigma 0.05 and 20, labels 3 and 7."""
    g = torch.Generator().manual_seed(123)
    r = kw["img_resolution"]
    x = torch.randn(2, kw["img_channels"], r, r, generator=g) * torch.tensor([0.05, 20.0]).view(2, 1, 1, 1)
    labels = torch.nn.functional.one_hot(torch.tensor([3, 7]), kw["label_dim"]).float() if kw["label_dim"] else None
    return x, torch.tensor([0.05, 20.0]), labels


EDM_CONFIGS = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml")
                     if OmegaConf.load(p).get("family") == "edm_pickle")


# ---- the EDM paper's preconditioning (Karras et al. 2022, Table 1), written out ---------------------------

def reference_D(cls, net, x, sigma, labels):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise(sigma)), with the inner network F of the loaded model."""
    s = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(len(x), 1, 1, 1)
    if cls == "EDMPrecond":
        sd = 0.5
        c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
        c_in, c_noise = 1 / (s**2 + sd**2).sqrt(), s.log() / 4
    elif cls == "VPPrecond":
        bd, b0, M = 19.9, 0.1, 1000
        t_of_sigma = ((b0**2 + 2 * bd * (1 + s**2).log()).sqrt() - b0) / bd  # sigma(t) = sqrt(exp(bd t^2/2 + b0 t) - 1)
        c_skip, c_out, c_in, c_noise = 1.0, -s, 1 / (s**2 + 1).sqrt(), (M - 1) * t_of_sigma
    elif cls == "VEPrecond":
        c_skip, c_out, c_in, c_noise = 1.0, s, 1.0, (0.5 * s).log()
    else:  # iDDPM: the index j of the nearest discrete level u_j, counted from the clean end
        M, C1, C2 = 1000, 0.001, 0.008
        abar = lambda j: math.sin(0.5 * math.pi * j / M / (C2 + 1)) ** 2  # noqa: E731
        u = [0.0] * (M + 1)
        for j in range(M, 0, -1):
            u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(abar(j - 1) / abar(j), C1) - 1)
        j = torch.tensor([min(range(M + 1), key=lambda k: abs(u[k] - float(v))) for v in s.flatten()])
        c_skip, c_out, c_in, c_noise = 1.0, -s, 1 / (s**2 + 1).sqrt(), (M - 1 - j).float().reshape(s.shape)
    F = net.model((c_in * x).float(), c_noise.flatten().float(), class_labels=labels)
    return c_skip * x + c_out * F[:, : x.shape[1]]


@pytest.mark.parametrize("name", EDM_CONFIGS)
def test_every_edm_config_loads_its_miniature_and_follows_the_paper_preconditioning(name, tmp_path):
    path, orig, cls = miniature(name, tmp_path)
    model = build_model(compose_cfg(f"model={name}", f"model.path={path}")["model"])
    loaded = model.net
    assert type(loaded).__name__ == cls
    assert loaded.state_dict().keys() == orig.state_dict().keys()
    assert all(torch.equal(a, loaded.state_dict()[k]) for k, a in orig.state_dict().items())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, *model.shape, generator=g)
    cond = model.conditions(0, range(2)) if model.num_classes else None
    labels = None if cond is None else torch.nn.functional.one_hot(cond, model.num_classes).float()
    for sigma in (0.002, 2.0, 80.0):
        got = model(sigma * x, sigma, cond)  # the edm noise schedule: t is sigma
        want = reference_D(cls, loaded, sigma * x, sigma, labels)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, sigma)), sigma
    rec = model.describe()
    assert rec["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert rec["source"]["url"].startswith("https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/")
    assert rec["source"]["url"].endswith(path.name) and rec["precond"] == cls


def test_vp_noise_schedule_feeds_the_denoiser_x_over_alpha_at_sigma_over_alpha(tmp_path):
    path, _, cls = miniature("cifar10_edm", tmp_path)
    edm = build_model(compose_cfg("model=cifar10_edm", f"model.path={path}")["model"])
    vp = build_model(compose_cfg("model=cifar10_edm", f"model.path={path}", "model/noise_schedule=vp_edm")["model"])
    t = 0.4
    a, s = float(vp.noise.alpha(t)), float(vp.noise.edm_sigma(t))
    x = torch.randn(2, *vp.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(vp(a * x, t), edm(x, s), atol=1e-6)
    # EDM's VP schedule: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)
    assert math.isclose(s, math.sqrt(math.exp(0.5 * 19.9 * t * t + 0.1 * t) - 1), rel_tol=1e-12)


# ---- never running the pickle's code ---------------------------------------------------------------------

def test_a_pickle_whose_embedded_source_would_raise_loads(tmp_path):
    path, orig, _ = miniature("cifar10_edm", tmp_path, src="raise RuntimeError('embedded code ran')\n")
    model = build_model(compose_cfg("model=cifar10_edm", f"model.path={path}")["model"])
    assert torch.equal(model.net.model.map_layer0.weight, orig.model.map_layer0.weight)
    assert "torch_utils.persistence" not in sys.modules and "dnnlib" not in sys.modules


def test_a_pickle_naming_an_unknown_class_is_refused_in_one_line(tmp_path):
    cls, kw = precond_kwargs("cifar10_edm")
    path = write_edm_pickle(tmp_path / "edm-cifar10-32x32-uncond-vp.pkl", random_net(cls, kw), kw, class_name="Evil")
    with pytest.raises(NfebenchError, match=r"unknown persistent class 'Evil'") as e:
        build_model(compose_cfg("model=cifar10_edm", f"model.path={path}")["model"])
    assert "\n" not in str(e.value)


class _Exploit:
    def __reduce__(self):
        return os.system, ("touch pwned",)


def test_a_foreign_global_is_refused_and_never_called(tmp_path):
    cls, kw = precond_kwargs("cifar10_edm")
    path = write_edm_pickle(tmp_path / "edm-cifar10-32x32-uncond-vp.pkl", random_net(cls, kw), kw,
                            extra={"payload": _Exploit()})
    with pytest.raises(NfebenchError, match=r"refused global (posix|os|nt)\.system"):
        build_model(compose_cfg("model=cifar10_edm", f"model.path={path}")["model"])
    assert not (Path.cwd() / "pwned").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign"])
def test_corrupt_truncated_or_foreign_pickles_are_one_line(tmp_path, damage):
    path, _, _ = miniature("cifar10_edm", tmp_path)
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a pickle at all" * 10)
    else:
        path.write_bytes(pickle.dumps({"ema": [1, 2, 3]}))
    with pytest.raises(NfebenchError) as e:
        build_model(compose_cfg("model=cifar10_edm", f"model.path={path}")["model"])
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_a_network_of_another_shape_is_one_line(tmp_path):
    path, _, _ = miniature("cifar10_edm", tmp_path)
    with pytest.raises(NfebenchError, match=r"img_resolution=32 \(model config expects 64\)"):
        build_model(compose_cfg("model=cifar10_edm", f"model.path={path}", "model.resolution=64")["model"])


def test_missing_file_names_file_url_and_place_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("NFEBENCH_CKPT_DIR", str(tmp_path / "ckpts"))
    start = time.perf_counter()
    with pytest.raises(NfebenchError) as e:
        build_model(compose_cfg("model=imagenet64_edm")["model"])
    assert time.perf_counter() - start < 1.0
    msg = str(e.value)
    assert "edm-imagenet-64x64-cond-adm.pkl" in msg and str(tmp_path / "ckpts") in msg and "model.path" in msg
    assert "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-imagenet-64x64-cond-adm.pkl" in msg and "\n" not in msg


def test_checkpoint_dir_finds_the_file_by_its_published_name(tmp_path, monkeypatch):
    path, _, _ = miniature("cifar10_cond_edm", tmp_path)
    monkeypatch.setenv("NFEBENCH_CKPT_DIR", str(tmp_path))
    model = build_model(compose_cfg("model=cifar10_cond_edm")["model"])
    assert model.describe()["source"]["path"] == str(path) and model.num_classes == 10


# ---- EDM's sampler ---------------------------------------------------------------------------------------

def edm_sampler(net, latents, class_labels=None, num_steps=18, sigma_min=0.002, sigma_max=80, rho=7):
    """Transcription of generate.py's edm_sampler (NVlabs/edm) with S_churn = 0: Heun steps on the rho-spaced
    sigmas, no correction on the last step (to sigma = 0), float64 state, the network called in float32."""
    sigma_min, sigma_max = max(sigma_min, net.sigma_min), min(sigma_max, net.sigma_max)
    i = torch.arange(num_steps, dtype=torch.float64)
    t_steps = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t_steps = torch.cat([net.round_sigma(t_steps), torch.zeros_like(t_steps[:1])])
    x_next = latents.to(torch.float64) * t_steps[0]
    for k, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_hat, t_hat = x_next, t_cur
        denoised = net(x_hat, t_hat.expand(len(x_hat)), class_labels).to(torch.float64)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if k < num_steps - 1:
            denoised = net(x_next, t_next.expand(len(x_next)), class_labels).to(torch.float64)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


EDM_HEUN = ["solver=heun", "solver.final_step=edm"]


@pytest.mark.parametrize("name", ["cifar10_cond_edm", "cifar10_baseline_ve_edm"])
def test_heun_with_edms_final_step_reproduces_generate_py(name, tmp_path):
    path, _, _ = miniature(name, tmp_path)
    cfg = compose_cfg(f"model={name}", f"model.path={path}", *EDM_HEUN, "nfe=35", "num_samples=2", "batch_size=1",
                      "metrics=none", "dtype=float64", "seed=5")
    p, model, got = plan(cfg), load_model(cfg), []
    counted = sample_batches(cfg, p, model, torch.device("cpu"), lambda x, x0, idx: got.append(x)).counted
    assert counted == 35 and len(p.ts) == 18  # 17 Heun steps down to sigma_min + the x0 step = EDM's 18 steps
    latents = SampleNoise(5, range(2), model.shape).draw()
    labels = None
    if model.num_classes:
        labels = torch.nn.functional.one_hot(model.conditions(5, range(2)), model.num_classes).float()
    want = edm_sampler(model.net, latents, labels)
    x = torch.cat(got)
    assert x.dtype == torch.float64
    # float64 rounding-order differences can flip one float32 ulp inside the network; a wrong grid or final step
    # would be off by orders of magnitude more
    assert torch.allclose(x, want, rtol=0, atol=1e-6 * float(want.abs().max())), float((x - want).abs().max())
    assert float(p.ts[-1]) == pytest.approx(max(0.002, float(model.net.sigma_min)), rel=1e-12)


def test_edm_heun_settings_through_launch_py_run_35_nfe_on_the_edm_sigma_grid(tmp_path):
    import json

    path, _, _ = miniature("cifar10_edm", tmp_path)
    run = tmp_path / "run"
    r = launch("model=cifar10_edm", f"model.path={path}", *EDM_HEUN, "nfe=35", "num_samples=2", "metrics=none",
               f"hydra.run.dir={run}", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    rec = json.loads((run / "record.json").read_text())
    assert rec["nfe"]["counted"] == 35 and rec["solver"]["steps"] == 17
    sig = rec["schedule"]["edm_sigma_grid"]
    assert sig[0] == pytest.approx(80.0) and sig[-1] == pytest.approx(0.002) and len(sig) == 18
    assert rec["model"]["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_missing_checkpoint_exits_2_with_one_line(tmp_path):
    env = {"NFEBENCH_CKPT_DIR": str(tmp_path)}
    r = launch("model=cifar10_edm", "solver=heun", "nfe=35", "metrics=none", f"hydra.run.dir={tmp_path / 'run'}",
               env=env)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("nfebench: error:")
    assert "edm-cifar10-32x32-uncond-vp.pkl" in lines[0] and not (tmp_path / "run" / "record.json").exists()


# ---- every solver on every kind of miniature -------------------------------------------------------------

KINDS = ["cifar10_edm", "cifar10_baseline_vp_edm", "cifar10_baseline_ve_edm", "imagenet64_baseline_edm"]


@pytest.mark.parametrize("name", KINDS)
def test_every_solver_runs_on_each_miniature_with_its_nfe_rule(name, tmp_path):
    path, _, _ = miniature(name, tmp_path, resolution=16)  # 16x16: the solvers, not the network, are under test
    model_cfg = compose_cfg(f"model={name}", f"model.path={path}", "model.resolution=16")["model"]
    model = build_model(model_cfg)
    every_solver_runs(model_cfg, model, model.shape)


# ---- golden values from NVlabs' own networks ---------------------------------------------------------------

# Provenance: NVlabs/edm training/networks.py (GitHub HEAD, fetched 2026-12-02), run once outside the repo with
# torch_utils.persistence stubbed to a no-op decorator, on random_net(cls, precond_kwargs(name)) weights and
# golden_inputs(); nfebench's modules gave bit-identical outputs (max |difference| 0.0) for all six.
# Values: sum |D(x; sigma)| over the batch and D[0, 0, 0, :3].
NVLABS_GOLDEN = {
    "cifar10_edm": (256.0196, [0.01923, -0.00491, -0.01227]),
    "cifar10_cond_ve_edm": (399.0596, [0.02685, 0.00246, -0.00433]),
    "cifar10_baseline_vp_edm": (48800.4296, [0.02209, -0.00343, -0.00947]),
    "cifar10_baseline_ve_edm": (49361.1385, [0.01374, -0.01654, -0.02117]),
    "imagenet64_edm": (1196.3133, [0.01946, -0.00809, -0.0123]),
    "imagenet64_baseline_edm": (198942.4928, [0.01905, -0.00262, -0.01006]),
}


@pytest.mark.parametrize("name", sorted(NVLABS_GOLDEN))
def test_networks_match_golden_outputs_of_nvlabs_code(name):
    cls, kw = precond_kwargs(name)
    x, sigma, labels = golden_inputs(kw)
    with torch.no_grad():
        out = random_net(cls, kw)(x, sigma, labels)
    total, first = NVLABS_GOLDEN[name]
    assert float(out.double().abs().sum()) == pytest.approx(total, rel=1e-5)
    assert out[0, 0, 0, :3].tolist() == pytest.approx(first, abs=2e-5)


def test_network_dtype_changes_the_unet_only(tmp_path):
    path, _, _ = miniature("imagenet64_baseline_edm", tmp_path, resolution=16)
    over = ("model=imagenet64_baseline_edm", f"model.path={path}", "model.resolution=16")
    full = build_model(compose_cfg(*over)["model"])
    half = build_model(compose_cfg(*over, "model.network_dtype=bfloat16")["model"])
    assert half.net.model.map_layer0.weight.dtype == torch.bfloat16 and half.net.u.dtype == torch.float32
    x = torch.randn(2, *full.shape, generator=torch.Generator().manual_seed(4))
    cond = full.conditions(0, range(2))
    a, b = full(2.0 * x, 2.0, cond), half(2.0 * x, 2.0, cond)
    assert b.dtype == torch.float32 and not torch.equal(a, b)
    assert float((a - b).abs().max()) < 0.05 * float(a.abs().max())
    assert half.describe()["network_dtype"] == "bfloat16"
