"""Bridge from nfebench extractors to torch-fidelity's feature-extractor registry.

``register_with_torch_fidelity("tiny")`` makes ``feature_extractor="nfebench-tiny"`` usable in
``torch_fidelity.calculate_metrics``, so torch-fidelity's own FID / ISC code can be run on the
very features nfebench's streaming suite sees: an independent check of the statistics and the
Fréchet / IS arithmetic. torch-fidelity feeds uint8 (B, C, H, W) images; they are mapped to
[-1, 1] exactly as a PNG-saved sample would be.
"""
from __future__ import annotations

from .features import build_extractor


def register_with_torch_fidelity(name: str, path: str | None = None) -> str:
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    ours = build_extractor(name, path)
    provided = ("pool", "logits") if ours.num_classes else ("pool",)

    class Bridge(FeatureExtractorBase):
        def __init__(self, fe_name, features_list, **kwargs):
            super().__init__(fe_name, features_list)

        @staticmethod
        def get_provided_features_list():
            return provided

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"fid": "pool", "kid": "pool", "prc": "pool", "isc": "logits"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            raise NotImplementedError

        def forward(self, x):
            pool, logits = ours(x.double() / 127.5 - 1)
            out = {"pool": pool.double(), "logits": logits.double() if logits is not None else None}
            return tuple(out[k] for k in self.features_list)

    fe_name = f"nfebench-{name}"
    if fe_name not in torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(fe_name, Bridge)
    return fe_name
