"""metrics=fid: FID (and Inception Score when the extractor has logits), streamed batch by batch.

Per batch: clamp to [-1, 1], optionally quantise to 8 bits (as if saved as PNG, the usual
protocol), extract features, fold them into float64 RunningMoments. Nothing is kept per image.

Inception Score uses a single split over all samples: IS = exp(E_x[sum_y p log p] - sum_y pbar
log pbar) with pbar = E_x[p(y|x)]. Its state is (n, sum_x p(y|x), sum_x sum_y p log p), plain
sums that merge exactly across shards. The common 10-split mean/std is not computed: splits
would depend on sample order across shards.
KID and precision/recall are not implemented here (they need feature subsets of both sides).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from sampling.errors import NfebenchError

from .features import build_extractor
from .fidcache import folder_reference, load_npz_reference
from .frechet import frechet_distance
from .moments import RunningMoments


def inception_score(n, p_sum, plogp_sum) -> float:
    pbar = np.asarray(p_sum, np.float64) / n
    pbar_log = np.where(pbar > 0, pbar * np.log(np.where(pbar > 0, pbar, 1.0)), 0.0)
    return float(np.exp(plogp_sum / n - pbar_log.sum()))


def load_reference(extractor, reference, cache_dir=None, batch=50) -> dict:
    if not reference:
        raise NfebenchError("metrics=fid needs metrics.reference: an npz with mu and sigma, or an image folder")
    from pathlib import Path
    p = Path(str(reference)).expanduser()
    ref = folder_reference(extractor, p, cache_dir, batch) if p.is_dir() else load_npz_reference(p)
    if ref["mu"].shape != (extractor.feature_dim,):
        raise NfebenchError(f"FID reference {reference} has {ref['mu'].shape[0]}-d statistics but extractor "
                            f"'{extractor.name}' gives {extractor.feature_dim}-d features")
    return ref


def reference_stats(extractor, images, batch: int = 50) -> dict:
    """mu, sigma of a tensor of images in [-1, 1]: how to write a reference npz from a dataset."""
    m = RunningMoments(extractor.feature_dim)
    for i in range(0, len(images), batch):
        m.update(extractor(images[i:i + batch])[0].double().cpu().numpy())
    return {"mu": m.mean, "sigma": m.cov(), "n": np.int64(m.n)}


class FIDMetrics:
    def __init__(self, model, t_start, t_end, extractor="fid_helper_inception", extractor_path=None,
                 reference=None, cache_dir=None, extract_batch=50, quantize=True, inception_score=True):
        self.extractor = build_extractor(extractor, extractor_path)
        self.ref = load_reference(self.extractor, reference, cache_dir, extract_batch)
        self.batch, self.quantize = int(extract_batch), bool(quantize)
        self.with_is = bool(inception_score) and self.extractor.num_classes > 0
        self.moments = RunningMoments(self.extractor.feature_dim)
        self.p_sum = np.zeros(self.extractor.num_classes)
        self.plogp_sum = 0.0
        self.seconds = 0.0

    def _images(self, x):
        x = x.detach().clamp(-1, 1)
        if self.quantize:
            x = torch.round((x + 1) * 127.5) / 127.5 - 1
        return x

    def update(self, samples, x_start=None):
        t0 = time.perf_counter()
        x = self._images(samples)
        for i in range(0, len(x), self.batch):
            feats, logits = self.extractor(x[i:i + self.batch])
            self.moments.update(feats.double().cpu().numpy())
            if self.with_is:
                logp = torch.log_softmax(logits.double(), dim=1)
                p = logp.exp()
                self.p_sum += p.sum(0).cpu().numpy()
                self.plogp_sum += float((p * logp).sum())
        self.seconds += time.perf_counter() - t0

    def state(self) -> dict:
        st = self.moments.state()
        return {"n": np.asarray(st["n"]), "mean": st["mean"], "m2": st["m2"], "is_p_sum": self.p_sum,
                "is_plogp_sum": np.asarray(self.plogp_sum), "feature_s": np.asarray(self.seconds)}

    def merge_state(self, state: dict) -> None:
        self.moments.merge(RunningMoments.from_state(state))
        self.p_sum = self.p_sum + np.asarray(state["is_p_sum"])
        self.plogp_sum += float(state["is_plogp_sum"])
        self.seconds += float(state["feature_s"])

    def result(self) -> dict:
        if self.moments.n < 2:
            raise NfebenchError(f"FID needs at least 2 samples, got {self.moments.n}")
        out = {"fid": frechet_distance(self.moments.mean, self.moments.cov(), self.ref["mu"], self.ref["sigma"])}
        if self.with_is:
            out["inception_score"] = inception_score(self.moments.n, self.p_sum, self.plogp_sum)
        return out

    def protocol(self) -> dict:
        return {
            "suite": "fid",
            "implementation": "nfebench streaming (float64 Chan moments, eigh Frechet)",
            "versions": {"torch": torch.__version__, "numpy": np.__version__},
            "extractor": self.extractor.describe(),
            "resize_mode": self.extractor.resize_mode,
            "reference": {k: v for k, v in self.ref.items() if k not in ("mu", "sigma")},
            "preprocess": "clamp [-1, 1]" + (", quantise to uint8 levels" if self.quantize else ""),
            "num_samples": int(self.moments.n),
            "inception_score": "single split over all samples" if self.with_is else None,
            "feature_extraction_s": self.seconds,
        }
