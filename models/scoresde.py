"""score_sde_pytorch checkpoints (Song et al. 2021) on nfebench's SongUNet.

A checkpoint (`checkpoint_<n>.pth`) is a torch.save dict: `model` (the DataParallel-wrapped
NCSNpp state dict, keys `module.all_modules.<i>.<layer>.<param>`), `ema` (`shadow_params`: the
EMA copies of the trainable parameters, in parameter order), `optimizer`, `step`. It is read
with torch.load(weights_only=True) only. NCSNpp keeps its layers in one flat list; the key map
below walks that list in NCSNpp's construction order and names each entry's SongUNet module,
which is how EDM converted these networks into its `baseline-*` pickles (DDPM++ -> VPPrecond,
NCSN++ -> VEPrecond). Supported: the BigGAN-block, noise-conditional configurations that
DPM-Solver-v3 and EDM use (`vp/cifar10_ddpmpp[_deep]_continuous`, `ve/cifar10_ncsnpp[_deep]_continuous`).

Time inputs follow from the preconditioners: VP networks see t * 999 (t recovered from sigma),
VE networks see log(sigma) of [0, 1] data (sigma / 2 in nfebench's [-1, 1] units).
"""
from __future__ import annotations

import io
import pickle
import zipfile

import torch

from common.errors import NfebenchError
from common.registry import check_choice

from .edm import EDMDenoiser, FileSource, check_shape
from .edm.checkpoint import locate, sha256
from .edm.precond import VEPrecond, VPPrecond
from .pretrained import network_dtype as parse_dtype

PRECONDS = {"vp": VPPrecond, "ve": VEPrecond}


def _resblock(prefix):
    return {"GroupNorm_0": f"{prefix}.norm0", "Conv_0": f"{prefix}.conv0", "Dense_0": f"{prefix}.affine",
            "GroupNorm_1": f"{prefix}.norm1", "Conv_1": f"{prefix}.conv1", "Conv_2": f"{prefix}.skip"}


def module_order(arch: dict) -> list[tuple[str, str]]:
    """(kind, SongUNet module) for each entry of NCSNpp's all_modules, in order."""
    res0, mults, nb = arch["img_resolution"], arch["channel_mult"], arch["num_blocks"]
    attn, last = set(arch["attn_resolutions"]), len(arch["channel_mult"]) - 1
    residual_in, skip_out = arch["encoder_type"] == "residual", arch["decoder_type"] == "skip"
    out = [("fourier", "map_noise")] if arch["embedding_type"] == "fourier" else []
    out += [("linear", "map_layer0"), ("linear", "map_layer1"), ("plain", f"enc.{res0}x{res0}_conv")]
    for level in range(len(mults)):
        r = res0 >> level
        for b in range(nb):
            out.append(("resblock", f"enc.{r}x{r}_block{b}"))
            if r in attn:
                out.append(("attn", f"enc.{r}x{r}_block{b}"))
        if level < last:
            d = r >> 1
            out.append(("resblock", f"enc.{d}x{d}_down"))
            if residual_in:
                out.append(("plain", f"enc.{d}x{d}_aux_residual"))  # up_or_down_sampling.Conv2d: weight, bias
    rmin = res0 >> last
    out += [("resblock", f"dec.{rmin}x{rmin}_in0"), ("attn", f"dec.{rmin}x{rmin}_in0"),
            ("resblock", f"dec.{rmin}x{rmin}_in1")]
    for level in reversed(range(len(mults))):
        r = res0 >> level
        for b in range(nb + 1):
            out.append(("resblock", f"dec.{r}x{r}_block{b}"))
        if r in attn:
            out.append(("attn", f"dec.{r}x{r}_block{nb}"))
        if skip_out:
            out += [("plain", f"dec.{r}x{r}_aux_norm"), ("plain", f"dec.{r}x{r}_aux_conv")]
        if level > 0:
            u = r << 1
            out.append(("resblock", f"dec.{u}x{u}_up"))
    if not skip_out:
        out += [("plain", f"dec.{res0}x{res0}_aux_norm"), ("plain", f"dec.{res0}x{res0}_aux_conv")]
    return out


def convert(sd: dict, arch: dict) -> dict:
    """NCSNpp state dict (`all_modules.<i>....`) -> SongUNet state dict (`model.<module>....`)."""
    groups: dict[int, dict] = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "all_modules":
            groups.setdefault(int(parts[1]), {})[".".join(parts[2:])] = v
    order = module_order(arch)
    if sorted(groups) != list(range(len(order))):
        raise NfebenchError(f"the checkpoint has {len(groups)} modules, the configured architecture {len(order)}")
    out = {}
    for i, (kind, name) in enumerate(order):
        g, base = groups[i], f"model.{name}"
        if kind == "fourier":
            out[f"{base}.freqs"] = g["W"]
        elif kind in ("linear", "plain"):
            # the input pyramid's layerspp.Downsample keeps its conv one level down, as Conv2d_0
            out.update({f"{base}.{p.removeprefix('Conv2d_0.')}": v for p, v in g.items()})
        elif kind == "resblock":
            names = _resblock(base)
            for p, v in g.items():
                layer, param = p.split(".")
                out[f"{names[layer]}.{param}"] = v
        else:  # AttnBlockpp: NIN_0..2 (q, k, v; W is in x out) -> one interleaved 1x1 qkv conv; NIN_3 -> proj
            c = g["NIN_0.W"].shape[0]
            w = torch.stack([g[f"NIN_{j}.W"].t() for j in range(3)], dim=1).reshape(3 * c, c, 1, 1)
            b = torch.stack([g[f"NIN_{j}.b"] for j in range(3)], dim=1).reshape(3 * c)
            out.update({f"{base}.norm2.weight": g["GroupNorm_0.weight"], f"{base}.norm2.bias": g["GroupNorm_0.bias"],
                        f"{base}.qkv.weight": w, f"{base}.qkv.bias": b,
                        f"{base}.proj.weight": g["NIN_3.W"].t()[:, :, None, None], f"{base}.proj.bias": g["NIN_3.b"]})
    return out


def ema_weights(ckpt: dict, label: str) -> dict:
    """The EMA state dict: shadow_params replace the trainable parameters in order (NCSNpp's fourier W is not one)."""
    model = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
    shadow = list(ckpt["ema"]["shadow_params"])
    trainable = [k for k in model if k != "sigmas" and not (k.startswith("all_modules.0.W") and model[k].ndim == 1)]
    if len(shadow) != len(trainable) or any(s.shape != model[k].shape for s, k in zip(shadow, trainable)):
        raise NfebenchError(f"{label}: its EMA shadow_params ({len(shadow)}) do not match its model parameters "
                            f"({len(trainable)})")
    return {**model, **dict(zip(trainable, shadow))}


def read_checkpoint(path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, io.UnsupportedOperation,
            pickle.UnpicklingError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise NfebenchError(f"{path}: not a loadable score_sde checkpoint ({type(err).__name__}: {first})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or "shadow_params" not in (ckpt.get("ema") or {}):
        raise NfebenchError(f"{path}: not a score_sde checkpoint (expected a dict with 'model' and 'ema' state dicts)")
    return ckpt


def build_scoresde(noise, *, file, url=None, path=None, sde="vp", arch=None, resolution=None, channels=3,
                   network_dtype="float32", use_ema=True, sampler=None):
    check_choice("model.sde", sde, PRECONDS)
    dt = parse_dtype(network_dtype)
    p = locate(file, url, path)
    arch = dict(arch or {})
    kw = dict(img_resolution=resolution, img_channels=channels, model_type="SongUNet", **arch)
    net = PRECONDS[sde](**kw)
    ckpt = read_checkpoint(p)
    weights = ema_weights(ckpt, str(p)) if use_ema else {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
    sd = convert(weights, {"img_resolution": resolution, **arch})
    # NCSNpp's FIR kernels are constants, not state: SongUNet's resample filters come from its own arch
    sd.update({k: v for k, v in net.state_dict().items() if k.endswith("resample_filter")})
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        raise NfebenchError(f"{p}: weights do not fit the configured architecture: {' '.join(str(err).split())[:300]}") \
            from None
    check_shape(p, net, {"img_resolution": resolution})
    return EDMDenoiser(noise, net.eval().requires_grad_(False), dt, FileSource(p, file, url, sha256(p)))
