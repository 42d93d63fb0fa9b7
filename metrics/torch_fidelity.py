"""metrics=fid_is: the torch-fidelity backend, FID and Inception Score (KID, precision/recall optional).

torch-fidelity does the work that defines the numbers: its feature extractor (uint8 input,
its TF1-compatible resize to 299, its Inception weights), its FID formula
(``fid_statistics_to_metric``), its KID and precision/recall functions. nfebench only streams:
features go batch by batch into float64 moments, IS sums and bounded feature subsets, so 50k
samples never sit in memory and shards merge exactly. IS is a single split (torch-fidelity's
``isc_splits=1``; its 10-split mean would depend on sample order across shards).

Weights are never downloaded: ``metrics.extractor_path`` or torch's hub cache must hold
torch-fidelity's file. ``metrics.extractor`` may also name an nfebench extractor (``tiny``,
``fid_helper_inception``), which is registered with torch-fidelity (``register_with_torch_fidelity``)
and run through it; the same bridge lets tests run torch-fidelity's own ``calculate_metrics`` on
the very features the suite sees.
Registered dataset names (``cifar10-train`` ...) are torch-fidelity's; their images are read
with download=False from ``metrics.dataset_root``, once, and only their statistics are cached.
"""
from __future__ import annotations

from pathlib import Path

import torch

from common.errors import NfebenchError
from common.registry import check_choice

from .features import EXTRACTORS, Extractor, build_extractor, file_sha256, to_uint8
from .fid import FIDSuite, package_version
from .references import cache_dir, cached_stats

# torch-fidelity's Inception file (basename of its URL_INCEPTION_V3; a test checks they agree).
TF_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
TF_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{TF_WEIGHTS_FILE}"

# torch-fidelity's registered datasets and the torchvision folder each needs under its root;
# a test checks this table against torch-fidelity's registry and torchvision's class attributes.
# Kept here so a missing dataset is reported without importing torchvision (~3 s).
TF_DATASETS = {
    "cifar10-train": ("cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar10-val": ("cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100-train": ("cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    "cifar100-val": ("cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    "stl10-train": ("stl10_binary", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"),
    "stl10-test": ("stl10_binary", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"),
    "stl10-unlabeled": ("stl10_binary", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"),
}


def register_with_torch_fidelity(name: str, path: str | None = None) -> str:
    """Register nfebench extractor ``name`` with torch-fidelity as ``nfebench-<name>`` (returned).

    torch-fidelity feeds uint8 (B, C, H, W) images; they are mapped to [-1, 1] exactly as a
    PNG-saved sample would be.
    """
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


class TorchFidelityExtractor(Extractor):
    """A torch-fidelity feature extractor behind nfebench's Extractor contract.

    Identity (name, sha256, dims) is known at once; the network itself is created on the first
    batch, so configuration errors surface before torch-fidelity (and torchvision) are imported.
    """
    input_size = 299

    def __init__(self, fe_name, features, make_kwargs, sha256, file, feature_dim, num_classes, resize_mode,
                 bridge=None):
        self.name, self.fe_name, self.features = fe_name, fe_name, features
        self.make_kwargs, self.sha256, self.file = make_kwargs, sha256, file
        self.feature_dim, self.num_classes, self._resize = feature_dim, num_classes, resize_mode
        self.bridge, self.net = bridge, None

    @property
    def resize_mode(self) -> str:
        return self._resize

    def _net(self):
        if self.net is None:
            import torch_fidelity

            if self.bridge:
                register_with_torch_fidelity(*self.bridge)
            cls = torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY[self.fe_name]
            self.net = cls(self.fe_name, list(self.features), **self.make_kwargs).eval()
        return self.net

    @torch.no_grad()
    def __call__(self, x):
        out = self._net()(to_uint8(x, rgb=True).cpu())
        pool = out[0].reshape(len(out[0]), -1)
        return pool, (out[1] if len(out) > 1 else None)


def _standard_inception(path):
    where = Path(path).expanduser() if path else Path(torch.hub.get_dir()) / "checkpoints" / TF_WEIGHTS_FILE
    if not where.is_file():
        raise NfebenchError(f"torch-fidelity Inception weights not found: {where}; put {TF_WEIGHTS_FILE} "
                            f"(from {TF_WEIGHTS_URL}) there or pass metrics.extractor_path=/path/to/{TF_WEIGHTS_FILE} "
                            "(no download is attempted)")
    return TorchFidelityExtractor(
        "inception-v3-compat", ("2048", "logits_unbiased"), {"feature_extractor_weights_path": str(where)},
        file_sha256(where), str(where), 2048, 1008,
        "torch-fidelity inception-v3-compat: uint8 input, TF1-compatible bilinear resize to 299x299 inside")


def _bridged(name, path):
    ours = build_extractor(name, path)  # fails fast (unknown name, missing file) before torch-fidelity loads
    ext = TorchFidelityExtractor(
        f"nfebench-{name}", ("pool", "logits") if ours.num_classes else ("pool",), {}, ours.sha256, ours.file,
        ours.feature_dim, ours.num_classes, f"uint8 input (torch-fidelity), then {ours.resize_mode}",
        bridge=(name, path))
    ext.input_range = ours.input_range
    return ext


# metrics.extractor -> builder(path); every nfebench extractor is also usable through the bridge.
FIDELITY_EXTRACTORS = {"inception-v3-compat": _standard_inception}


def build_fidelity_extractor(name, path):
    check_choice("metrics=fid_is extractor", name, [*sorted(FIDELITY_EXTRACTORS), *EXTRACTORS])
    return FIDELITY_EXTRACTORS[name](path) if name in FIDELITY_EXTRACTORS else _bridged(name, path)


def dataset_images(name: str, root: Path):
    """(index, image in [-1, 1]) of a torch-fidelity dataset read from root, never downloaded."""
    folder, url = TF_DATASETS[name]
    if not (root / folder).is_dir():
        raise NfebenchError(f"torch-fidelity dataset '{name}' not found: {root / folder} is missing; extract "
                            f"{url.rsplit('/', 1)[-1]} (from {url}) into {root} or set metrics.dataset_root "
                            "(nothing is downloaded)")
    import torch_fidelity

    try:
        ds = torch_fidelity.registry.DATASETS_REGISTRY[name](str(root), False)
    except RuntimeError as err:
        raise NfebenchError(f"torch-fidelity dataset '{name}' under {root} is unreadable: {err}") from None
    return ((i, ds[i].double() / 127.5 - 1) for i in range(len(ds)))


class TorchFidelityFID(FIDSuite):
    suite_name = "fid_is"
    quantize_fixed = True   # torch-fidelity extractors take uint8 images

    def _backend_options(self, dataset_root=None, **rest) -> dict:
        super()._backend_options(**rest)
        return {"dataset_root": dataset_root}

    def _build_extractor(self, name, path):
        return build_fidelity_extractor(name, path)

    def reference_names(self) -> list:
        return sorted(TF_DATASETS)

    def named_reference(self, name) -> dict:
        root = Path(self.backend["dataset_root"] or cache_dir(self.cache_dir) / "datasets").expanduser()
        stats = cached_stats(self.extractor, f"torch-fidelity-dataset:{name}", lambda: dataset_images(name, root),
                             self.cache_dir, self.batch, self.subset_size)
        return {**stats, "dataset_root": str(root)}

    def _fid(self, mu, sigma, ref) -> float:
        from torch_fidelity.metric_fid import fid_statistics_to_metric

        out = fid_statistics_to_metric({"mu": mu, "sigma": sigma}, {"mu": ref["mu"], "sigma": ref["sigma"]}, False)
        return out["frechet_inception_distance"]

    def implementation(self) -> dict:
        return {"name": "torch-fidelity", "version": package_version("torch-fidelity"),
                "details": "torch-fidelity extractor + fid_statistics_to_metric on nfebench's streamed float64 "
                           "moments; IS = torch-fidelity's formula with one split, from streamed sums",
                **self._kid_prc_implementation(), "versions": {"torch": torch.__version__}}
