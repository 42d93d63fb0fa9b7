"""score_sde_pytorch checkpoints (Song et al. 2021) loaded into nfebench's SongUNet.

Miniature checkpoints are written here in the published layout: torch.save of
{model: DataParallel state dict `module.all_modules.<i>.<layer>.<param>` + `module.sigmas`,
ema: {decay, num_updates, shadow_params}, optimizer, step}, with NCSNpp's module list built
below from its construction order (models/ncsnpp.py of yang-song/score_sde_pytorch). The
DDPM++ forward pass is checked against a transcription of NCSNpp's forward written in this
file (BigGAN blocks, no FIR, positional embedding: the `vp/cifar10_ddpmpp*_continuous` configs).
"""
from __future__ import annotations

import hashlib
import math
import time

import pytest
import torch
import torch.nn.functional as F

from models.registry import build_model
from common.errors import NfebenchError
from sampling.registry import get_solver
from helpers import compose_cfg, every_solver_runs

get_solver("ddim")  # registers every solver
pytestmark = pytest.mark.usefixtures("one_thread")


# A miniature NCSNpp: nf=16, two resolutions, one block each, attention at the lower one.
MINI = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), image_size=16, channels=3)
ARCH_OVERRIDES = ["model.resolution=16", "model.arch.model_channels=16", "model.arch.channel_mult=[1,2]",
                  "model.arch.num_blocks=1", "model.arch.attn_resolutions=[8]"]


def ncsnpp_modules(fourier: bool, residual_input: bool, nf, ch_mult, num_res_blocks, attn_resolutions, image_size,
                   channels):
    """NCSNpp's all_modules as a list of {param name: shape}, in its construction order (biggan blocks,
    conditional, progressive 'none')."""
    temb = 4 * nf
    res = lambda cin, cout, updown=False: {  # noqa: E731 - ResnetBlockBigGANpp
        "GroupNorm_0.weight": (cin,), "GroupNorm_0.bias": (cin,), "Conv_0.weight": (cout, cin, 3, 3),
        "Conv_0.bias": (cout,), "Dense_0.weight": (cout, temb), "Dense_0.bias": (cout,), "GroupNorm_1.weight": (cout,),
        "GroupNorm_1.bias": (cout,), "Conv_1.weight": (cout, cout, 3, 3), "Conv_1.bias": (cout,),
        **({"Conv_2.weight": (cout, cin, 1, 1), "Conv_2.bias": (cout,)} if cin != cout or updown else {})}
    attn = lambda c: {"GroupNorm_0.weight": (c,), "GroupNorm_0.bias": (c,),  # noqa: E731 - AttnBlockpp
                      **{f"NIN_{j}.{p}": ((c, c) if p == "W" else (c,)) for j in range(4) for p in ("W", "b")}}
    mods = [{"W": (nf,)}] if fourier else []
    embed = 2 * nf if fourier else nf
    mods += [{"weight": (temb, embed), "bias": (temb,)}, {"weight": (temb, temb), "bias": (temb,)},
             {"weight": (nf, channels, 3, 3), "bias": (nf,)}]
    hs, cin, pyr = [nf], nf, channels
    n = len(ch_mult)
    for lvl in range(n):
        for _ in range(num_res_blocks):
            mods.append(res(cin, nf * ch_mult[lvl]))
            cin = nf * ch_mult[lvl]
            if image_size >> lvl in attn_resolutions:
                mods.append(attn(cin))
            hs.append(cin)
        if lvl != n - 1:
            mods.append(res(cin, cin, updown=True))
            if residual_input:
                mods.append({"Conv2d_0.weight": (cin, pyr, 3, 3), "Conv2d_0.bias": (cin,)})
                pyr = cin
            hs.append(cin)
    mods += [res(cin, cin), attn(cin), res(cin, cin)]
    for lvl in reversed(range(n)):
        for _ in range(num_res_blocks + 1):
            mods.append(res(cin + hs.pop(), nf * ch_mult[lvl]))
            cin = nf * ch_mult[lvl]
        if image_size >> lvl in attn_resolutions:
            mods.append(attn(cin))
        if lvl != 0:
            mods.append(res(cin, cin, updown=True))
    mods += [{"weight": (cin,), "bias": (cin,)}, {"weight": (channels, cin, 3, 3), "bias": (channels,)}]
    return mods


def write_checkpoint(path, fourier, residual_input, seed=0, **mini):
    g = torch.Generator().manual_seed(seed)
    model, shadow = {"module.sigmas": torch.linspace(50, 0.01, 1000)}, []
    for i, mod in enumerate(ncsnpp_modules(fourier, residual_input, **mini)):
        for p, shape in mod.items():
            t = 0.1 * torch.randn(shape, generator=g) + (1.0 if "GroupNorm" in p and p.endswith("weight") else 0.0)
            if fourier and i == 0:
                t = 16 * torch.randn(shape, generator=g)  # GaussianFourierProjection.W, not trainable
            model[f"module.all_modules.{i}.{p}"] = t
            if not (fourier and i == 0):
                shadow.append(t + 0.01 * torch.randn(shape, generator=g))  # EMA differs from the raw weights
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "ema": {"decay": 0.9999, "num_updates": 7, "shadow_params": shadow},
                "optimizer": {"state": {}, "param_groups": []}, "step": 8}, path)
    return path, model, shadow


# ---- NCSNpp's DDPM++ forward, transcribed ----------------------------------------------------------------

def ncsnpp_ddpmpp_forward(w: dict, x, t_label, nf, ch_mult, num_res_blocks, attn_resolutions, **_):
    """eps(x, t*999) of NCSNpp with biggan blocks, no FIR, positional embedding, no progressive paths."""
    mods = sorted({int(k.split(".")[1]) for k in w if k.startswith("all_modules.")})
    m = [{k.split(".", 2)[2]: v for k, v in w.items() if k.startswith(f"all_modules.{i}.")} for i in mods]
    act, it = F.silu, iter(m)
    gn = lambda h, p, pre: F.group_norm(h, min(h.shape[1] // 4, 32), p[f"{pre}.weight"], p[f"{pre}.bias"], 1e-6)  # noqa
    conv = lambda h, p, pre, pad=1: F.conv2d(h, p[f"{pre}weight"], p[f"{pre}bias"], padding=pad)  # noqa: E731
    nin = lambda h, p, j: torch.einsum("bchw,co->bohw", h, p[f"NIN_{j}.W"]) + p[f"NIN_{j}.b"][None, :, None, None]  # noqa

    def resblock(h, temb, up=False, down=False):
        p = next(it)
        y = act(gn(h, p, "GroupNorm_0"))
        if up:
            y, h = (F.interpolate(v, scale_factor=2, mode="nearest") for v in (y, h))
        if down:
            y, h = (F.avg_pool2d(v, 2) for v in (y, h))
        y = conv(y, p, "Conv_0.") + (act(temb) @ p["Dense_0.weight"].t() + p["Dense_0.bias"])[:, :, None, None]
        y = conv(act(gn(y, p, "GroupNorm_1")), p, "Conv_1.")
        if "Conv_2.weight" in p:
            h = conv(h, p, "Conv_2.", pad=0)
        return (h + y) / math.sqrt(2.0)

    def attnblock(h):
        p = next(it)
        y = gn(h, p, "GroupNorm_0")
        q, k, v = nin(y, p, 0), nin(y, p, 1), nin(y, p, 2)
        b, c, hh, ww = q.shape
        a = torch.einsum("bchw,bcij->bhwij", q, k) * c ** -0.5
        a = a.reshape(b, hh, ww, hh * ww).softmax(-1).reshape(b, hh, ww, hh, ww)
        return (h + nin(torch.einsum("bhwij,bcij->bchw", a, v), p, 3)) / math.sqrt(2.0)

    half = nf // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    emb = t_label.float()[:, None] * freqs[None]
    temb = torch.cat([emb.sin(), emb.cos()], dim=1)
    p0, p1 = next(it), next(it)
    temb = act(temb @ p0["weight"].t() + p0["bias"]) @ p1["weight"].t() + p1["bias"]
    hs = [conv(x, next(it), "")]
    n = len(ch_mult)
    for lvl in range(n):
        for _ in range(num_res_blocks):
            h = resblock(hs[-1], temb)
            if h.shape[-1] in attn_resolutions:
                h = attnblock(h)
            hs.append(h)
        if lvl != n - 1:
            hs.append(resblock(hs[-1], temb, down=True))
    h = resblock(attnblock(resblock(hs[-1], temb)), temb)
    for lvl in reversed(range(n)):
        for _ in range(num_res_blocks + 1):
            h = resblock(torch.cat([h, hs.pop()], dim=1), temb)
        if h.shape[-1] in attn_resolutions:
            h = attnblock(h)
        if lvl != 0:
            h = resblock(h, temb, up=True)
    p = next(it)
    h = act(F.group_norm(h, min(h.shape[1] // 4, 32), p["weight"], p["bias"], 1e-6))
    return conv(h, next(it), "")


def _ema_state(model, shadow, fourier):
    names = [k.removeprefix("module.") for k in model if k != "module.sigmas"]
    trainable = [k for k in names if not (fourier and k.startswith("all_modules.0."))]
    out = {k.removeprefix("module."): v for k, v in model.items()}
    out.update(dict(zip(trainable, shadow)))
    return out


def test_vp_checkpoint_loads_its_ema_weights_and_matches_ncsnpps_forward(tmp_path):
    path, model, shadow = write_checkpoint(tmp_path / "checkpoint_8.pth", fourier=False, residual_input=False, **MINI)
    m = build_model(compose_cfg("model=cifar10_scoresde_vp_deep", f"model.path={path}", *ARCH_OVERRIDES)["model"])
    ema = _ema_state(model, shadow, fourier=False)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    for t in (1e-3, 0.3, 1.0):
        # Song et al.'s VP SDE with beta 0.1 -> 20: log alpha_t = -beta_d t^2 / 4 - beta_min t / 2
        a = math.exp(-0.25 * t * t * 19.9 - 0.5 * t * 0.1)
        s = math.sqrt(1 - a * a)
        xt = a * x0 + s * eps
        e = ncsnpp_ddpmpp_forward(ema, xt, torch.full((2,), 999 * t), **MINI)
        want = (xt - s * e) / a
        got = m(xt, t)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, s / a)), t
    rec = m.describe()
    assert rec["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert rec["precond"] == "VPPrecond" and rec["unet"] == "SongUNet"


def test_raw_weights_differ_from_ema_weights(tmp_path):
    path, model, shadow = write_checkpoint(tmp_path / "c.pth", fourier=False, residual_input=False, **MINI)
    cfg = compose_cfg("model=cifar10_scoresde_vp_deep", f"model.path={path}", *ARCH_OVERRIDES)["model"]
    ema, raw = build_model(cfg), build_model({**cfg, "use_ema": False})
    w = "model.enc.16x16_conv.weight"
    assert torch.equal(ema.net.state_dict()[w], shadow[4]) and torch.equal(raw.net.state_dict()[w],
                                                                            model["module.all_modules.2.weight"])


def test_ve_checkpoint_follows_the_ve_preconditioning(tmp_path):
    path, model, shadow = write_checkpoint(tmp_path / "checkpoint_24.pth", fourier=True, residual_input=True, **MINI)
    m = build_model(compose_cfg("model=cifar10_scoresde_ve", f"model.path={path}", *ARCH_OVERRIDES)["model"])
    sd = m.net.state_dict()
    assert torch.equal(sd["model.map_noise.freqs"], model["module.all_modules.0.W"])
    ema = _ema_state(model, shadow, fourier=True)
    # modules: 0 fourier, 1-2 linear, 3 conv, 4 block, 5 down block, 6 the input pyramid's FIR conv
    assert torch.equal(sd["model.enc.8x8_aux_residual.weight"], ema["all_modules.6.Conv2d_0.weight"])
    assert not torch.equal(ema["all_modules.6.Conv2d_0.weight"], model["module.all_modules.6.Conv2d_0.weight"])
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    for sigma in (0.02, 1.0, 100.0):
        # VE: D = x + sigma F(x; log(sigma / 2)), F the network's raw output (its score times sigma of [0, 1] data)
        want = sigma * x + sigma * m.net.model(sigma * x, torch.full((2,), math.log(sigma / 2)), None)
        assert torch.allclose(m(sigma * x, sigma), want, rtol=1e-5, atol=1e-5 * sigma)


def test_attention_weights_are_interleaved_into_one_qkv_convolution(tmp_path):
    path, model, shadow = write_checkpoint(tmp_path / "c.pth", fourier=False, residual_input=False, **MINI)
    m = build_model(compose_cfg("model=cifar10_scoresde_vp_deep", f"model.path={path}", *ARCH_OVERRIDES,
                                "model.use_ema=false")["model"])
    # module 5 is the encoder's 8x8 attention (embedding 0-1, conv 2, block 3, down 4, block 5 at 8x8 -> attn 6)
    qkv = m.net.state_dict()["model.enc.8x8_block0.qkv.weight"][:, :, 0, 0]
    assert torch.equal(qkv[0::3], model["module.all_modules.6.NIN_0.W"].t())
    assert torch.equal(qkv[2::3], model["module.all_modules.6.NIN_2.W"].t())


@pytest.mark.parametrize("damage", ["truncate", "foreign", "shape"])
def test_bad_checkpoints_are_one_line(tmp_path, damage):
    path, model, shadow = write_checkpoint(tmp_path / "c.pth", fourier=False, residual_input=False, **MINI)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "foreign":
        torch.save({"state_dict": {}}, path)
    overrides = [*ARCH_OVERRIDES] + (["model.arch.num_blocks=2"] if damage == "shape" else [])
    with pytest.raises(NfebenchError) as e:
        build_model(compose_cfg("model=cifar10_scoresde_vp_deep", f"model.path={path}", *overrides)["model"])
    assert "\n" not in str(e.value) and str(path) in str(e.value) or "modules" in str(e.value)


def test_a_pickle_payload_is_never_unpickled(tmp_path):
    import os

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    path = tmp_path / "c.pth"
    torch.save({"model": {}, "ema": {"shadow_params": []}, "x": Exploit()}, path)
    with pytest.raises(NfebenchError, match="not a loadable score_sde checkpoint"):
        build_model(compose_cfg("model=cifar10_scoresde_vp_deep", f"model.path={path}", *ARCH_OVERRIDES)["model"])
    assert not (tmp_path / "pwned").exists()


def test_missing_checkpoint_is_one_line_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("NFEBENCH_CKPT_DIR", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(NfebenchError) as e:
        build_model(compose_cfg("model=cifar10_scoresde_vp_deep")["model"])
    assert time.perf_counter() - start < 1.0
    msg = str(e.value)
    assert "vp/cifar10_ddpmpp_deep_continuous/checkpoint_8.pth" in msg and "drive.google.com" in msg
    assert str(tmp_path) in msg and "\n" not in msg


@pytest.mark.parametrize("name,fourier", [("cifar10_scoresde_vp_deep", False), ("cifar10_scoresde_ve", True)])
def test_every_solver_runs_on_each_miniature_with_its_nfe_rule(name, fourier, tmp_path):
    path, _, _ = write_checkpoint(tmp_path / "c.pth", fourier=fourier, residual_input=fourier, **MINI)
    model_cfg = compose_cfg(f"model={name}", f"model.path={path}", *ARCH_OVERRIDES)["model"]
    model = build_model(model_cfg)
    every_solver_runs(model_cfg, model, (3, 16, 16))


# Provenance: yang-song/score_sde_pytorch models/ncsnpp.py (GitHub HEAD, fetched 2026-12-02), run once outside the
# repo on CPU (op.upfirdn2d's native path, the CUDA extension not built), configured like the miniature (nf=16,
# ch_mult=(1, 2), one block, attention at 8x8; VP: ddpmpp_continuous settings, VE: ncsnpp_continuous settings with
# FIR [1,3,3,1], residual input pyramid, fourier features, scale_by_sigma), loaded with write_checkpoint(seed 0)'s
# raw weights then its EMA copied in as score_sde's ExponentialMovingAverage.copy_to does. Its state-dict keys were
# exactly write_checkpoint's. Values: x0 (in [-1, 1] units) at t = 1 for the inputs below: sum |x0| and x0[0,0,0,:3].
# nfebench agreed to <= 6e-7 relative at t = 1e-3, 0.1, 0.5 and 1.
SCORE_SDE_GOLDEN = {
    "cifar10_scoresde_vp_deep": (183150.5646, [-120.93649, 173.60088, -235.79604]),
    "cifar10_scoresde_ve": (121872.2257, [-89.9036, 105.79084, -185.83324]),
}


@pytest.mark.parametrize("name", sorted(SCORE_SDE_GOLDEN))
def test_x0_matches_golden_values_of_score_sde_pytorchs_ncsnpp(name, tmp_path):
    ve = name.endswith("_ve")
    path, _, _ = write_checkpoint(tmp_path / "c.pth", fourier=ve, residual_input=ve, **MINI)
    m = build_model(compose_cfg(f"model={name}", f"model.path={path}", *ARCH_OVERRIDES)["model"])
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    if ve:  # Song et al.'s VE on [0, 1] data at t = 1: sigma = 50, i.e. 100 in [-1, 1] units
        got = m(2 * ((x0 + 1) / 2 + 50.0 * eps) - 1, 100.0)
    else:
        a = math.exp(-0.25 * 19.9 - 0.5 * 0.1)
        got = m(a * x0 + math.sqrt(1 - a * a) * eps, 1.0)
    total, first = SCORE_SDE_GOLDEN[name]
    assert float(got.double().abs().sum()) == pytest.approx(total, rel=1e-5)
    assert got[0, 0, 0, :3].tolist() == pytest.approx(first, rel=1e-5)
