"""metrics=fid: FID (and Inception Score when the extractor has logits), streamed batch by batch.

Per batch: clamp to [-1, 1], optionally quantise to 8 bits (as if saved as PNG, the usual
protocol), extract features, fold them into float64 RunningMoments. Nothing is kept per image.

Inception Score uses a single split over all samples: IS = exp(E_x[sum_y p log p] - sum_y pbar
log pbar) with pbar = E_x[p(y|x)]. Its state is (n, sum_x p(y|x), sum_x sum_y p log p), plain
sums that merge exactly across shards. The common 10-split mean/std is not computed: splits
would depend on sample order across shards.
KID and precision/recall (options ``kid``, ``prc``) are computed by torch-fidelity's functions on
bounded feature subsets of both sides (metrics/subset.py), kept during the same single pass.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from common.errors import NfebenchError

from .features import build_extractor, check_images, to_uint8
from .references import resolve_reference
from .frechet import frechet_distance
from .moments import RunningMoments
from .subset import FeatureSubset


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def inception_score(n, p_sum, plogp_sum) -> float:
    pbar = np.asarray(p_sum, np.float64) / n
    pbar_log = np.where(pbar > 0, pbar * np.log(np.where(pbar > 0, pbar, 1.0)), 0.0)
    return float(np.exp(plogp_sum / n - pbar_log.sum()))


def reference_stats(extractor, images, batch: int = 50) -> dict:
    """mu, sigma of a tensor of images in [-1, 1]: how to write a reference npz from a dataset."""
    m = RunningMoments(extractor.feature_dim)
    for i in range(0, len(images), batch):
        m.update(extractor(images[i:i + batch])[0].double().cpu().numpy())
    return {"mu": m.mean, "sigma": m.cov(), "n": np.int64(m.n)}


class FIDMetrics:
    """Suite ``fid``; the base of ``fid_is`` and ``clean_fid``, which swap the hooks below.

    Hooks: ``_build_extractor`` (images in [-1, 1] -> (features, logits)), ``reference_names`` /
    ``named_reference`` (registered datasets), ``_fid`` (Fréchet distance of moments), ``_kid`` /
    ``_prc`` (on feature subsets) and ``implementation``.
    """
    suite_name = "fid"
    quantize_fixed: bool | None = None   # backends that only take uint8 images quantise always

    def __init__(self, model, t_start, t_end, extractor="fid_helper_inception", extractor_path=None,
                 reference=None, cache_dir=None, extract_batch=50, quantize=True, inception_score=True,
                 kid=False, prc=False, feature_subset=10000, kid_subsets=100, kid_subset_size=1000,
                 prc_neighborhood=3, protocol_num_samples=None, **backend):
        self.backend = self._backend_options(**backend)
        self.cache_dir, self.batch = cache_dir, int(extract_batch)
        self.quantize = bool(quantize) if self.quantize_fixed is None else self.quantize_fixed
        self.kid, self.prc = bool(kid), bool(prc)
        self.kid_opts = {"kid_subsets": int(kid_subsets), "kid_subset_size": int(kid_subset_size)}
        self.prc_neighborhood = int(prc_neighborhood)
        self.subset_size = int(feature_subset) if (self.kid or self.prc) else 0
        if (self.kid or self.prc) and self.subset_size < 2:
            raise NfebenchError(f"metrics.feature_subset must be >= 2 for KID / precision-recall; got {feature_subset}")
        self.protocol_num_samples = protocol_num_samples
        self.extractor = self._build_extractor(extractor, extractor_path)
        self.ref = self._load_reference(reference)
        self.with_is = bool(inception_score) and self.extractor.num_classes > 0
        self.moments = RunningMoments(self.extractor.feature_dim)
        self.subset = FeatureSubset(self.subset_size, self.extractor.feature_dim) if self.subset_size else None
        self.p_sum = np.zeros(self.extractor.num_classes)
        self.plogp_sum = 0.0
        self.seconds = 0.0
        self._next_index = 0

    # ---- hooks -------------------------------------------------------------------------
    def _backend_options(self, **backend) -> dict:
        if backend:
            raise NfebenchError(f"unknown option(s) for metrics={self.suite_name}: {', '.join(sorted(backend))}")
        return {}

    def _build_extractor(self, name, path):
        return build_extractor(name, path)

    def reference_names(self) -> list:
        return []

    def named_reference(self, name) -> dict:
        raise NotImplementedError

    def _fid(self, mu, sigma, ref) -> float:
        return frechet_distance(mu, sigma, ref["mu"], ref["sigma"])

    def _kid(self, gen, ref) -> dict:
        from torch_fidelity.metric_kid import kid_features_to_metric

        out = kid_features_to_metric(torch.from_numpy(gen), torch.from_numpy(ref), verbose=False, rng_seed=2020,
                                     **self.kid_opts)
        return {"kid_mean": out["kernel_inception_distance_mean"], "kid_std": out["kernel_inception_distance_std"]}

    def _prc(self, gen, ref) -> dict:
        from torch_fidelity.metric_prc import prc_features_to_metric

        out = prc_features_to_metric(torch.from_numpy(gen), torch.from_numpy(ref), prc_neighborhood=self.prc_neighborhood,
                                     prc_batch_size=1000, save_cpu_ram=True, verbose=False)
        return {"precision": out["precision"], "recall": out["recall"], "f_score": out["f_score"]}

    def implementation(self) -> dict:
        return {"name": "nfebench streaming (float64 Chan moments, eigh Frechet)", "version": _version("nfebench"),
                **self._kid_prc_implementation(),
                "versions": {"torch": torch.__version__, "numpy": np.__version__}}

    def _kid_prc_implementation(self) -> dict:
        return {"kid_prc": f"torch-fidelity {_version('torch-fidelity')}"} if (self.kid or self.prc) else {}

    # ---- shared machinery -----------------------------------------------------------------
    def _load_reference(self, reference) -> dict:
        ref = resolve_reference(self, reference)
        if ref["mu"].shape != (self.extractor.feature_dim,):
            raise NfebenchError(f"FID reference {reference} has {ref['mu'].shape[0]}-d statistics but extractor "
                                f"'{self.extractor.name}' gives {self.extractor.feature_dim}-d features")
        if self.subset_size and "subset_feats" not in ref:
            raise NfebenchError(f"KID / precision-recall need reference features, and {reference} has only mu and "
                                "sigma: use an image folder or dataset name, or an npz with a 'features' array")
        return ref

    def _images(self, x):
        x = x.detach().clamp(-1, 1)
        if self.quantize:
            x = to_uint8(x).to(x.dtype) / 127.5 - 1
        return x

    def update(self, samples, x_start=None, indices=None):
        """indices: the global sample indices of this batch (needed for shard-exact feature subsets)."""
        t0 = time.perf_counter()
        check_images(samples)
        if indices is None:
            indices = range(self._next_index, self._next_index + len(samples))
        indices = np.asarray(list(indices), np.int64)
        if len(indices) != len(samples):
            raise NfebenchError(f"{len(samples)} samples but {len(indices)} sample indices")
        self._next_index = int(indices.max()) + 1 if len(indices) else self._next_index
        x = self._images(samples)
        for i in range(0, len(x), self.batch):
            feats, logits = self.extractor(x[i:i + self.batch])
            feats = feats.double().cpu().numpy()
            self.moments.update(feats)
            if self.subset is not None:
                self.subset.update(indices[i:i + self.batch], feats)
            if self.with_is:
                logp = torch.log_softmax(logits.double(), dim=1)
                p = logp.exp()
                self.p_sum += p.sum(0).cpu().numpy()
                self.plogp_sum += float((p * logp).sum())
        self.seconds += time.perf_counter() - t0

    def state(self) -> dict:
        st = self.moments.state()
        return {"n": np.asarray(st["n"]), "mean": st["mean"], "m2": st["m2"], "is_p_sum": self.p_sum,
                "is_plogp_sum": np.asarray(self.plogp_sum), "feature_s": np.asarray(self.seconds),
                **(self.subset.state() if self.subset is not None else {})}

    def merge_state(self, state: dict) -> None:
        self.moments.merge(RunningMoments.from_state(state))
        self.p_sum = self.p_sum + np.asarray(state["is_p_sum"])
        self.plogp_sum += float(state["is_plogp_sum"])
        self.seconds += float(state["feature_s"])
        if self.subset is not None:
            self.subset.merge(FeatureSubset.from_state(state, self.subset_size))

    def result(self) -> dict:
        if self.moments.n < 2:
            raise NfebenchError(f"FID needs at least 2 samples, got {self.moments.n}")
        out = {"fid": float(self._fid(self.moments.mean, self.moments.cov(), self.ref))}
        if self.with_is:
            out["inception_score"] = inception_score(self.moments.n, self.p_sum, self.plogp_sum)
        gen, ref = (self.subset.feats, self.ref["subset_feats"]) if self.subset is not None else (None, None)
        if self.kid:
            need = self.kid_opts["kid_subset_size"]
            if min(len(gen), len(ref)) < need:
                raise NfebenchError(f"KID needs kid_subset_size={need} features on each side; have {len(gen)} "
                                    f"generated and {len(ref)} reference: lower metrics.kid_subset_size")
            out.update(self._kid(gen, ref))
        if self.prc:
            if min(len(gen), len(ref)) <= self.prc_neighborhood:
                raise NfebenchError(f"precision/recall needs more than prc_neighborhood={self.prc_neighborhood} "
                                    f"features on each side; have {len(gen)} and {len(ref)}")
            out.update(self._prc(gen, ref))
        return out

    def protocol(self) -> dict:
        ref = {k: v for k, v in self.ref.items() if k not in ("mu", "sigma") and not k.startswith("subset_")}
        return {
            "suite": self.suite_name,
            "implementation": self.implementation(),
            "extractor": self.extractor.describe(),
            "resize_mode": self.extractor.resize_mode,
            "reference": {**ref, "n": None if ref.get("n") is None else int(ref["n"]),
                          "features_kept": len(self.ref["subset_feats"]) if self.subset_size else None},
            "preprocess": "clamp [-1, 1]" + (", quantise to uint8 levels" if self.quantize else ""),
            "num_samples": int(self.moments.n),
            "protocol_num_samples": self.protocol_num_samples,
            "inception_score": "single split over all samples" if self.with_is else None,
            "kid": {**self.kid_opts, "kernel": "poly degree 3, gamma 1/d, coef0 1", "rng_seed": 2020} if self.kid else None,
            "precision_recall": {"neighborhood": self.prc_neighborhood} if self.prc else None,
            "feature_subset": {"size": self.subset_size, "kept": len(self.subset.idx),
                               "selection": "bottom-k of splitmix64(sample index)"} if self.subset else None,
            "feature_extraction_s": self.seconds,
        }
