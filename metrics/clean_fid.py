"""metrics=clean_fid: the clean-fid backend, ``mode`` = clean | legacy_tensorflow | legacy_pytorch.

clean-fid does the work that defines the number: its per-image resizer for the mode (PIL
bicubic on float images for ``clean``, torch bilinear for ``legacy_pytorch``, none outside the
network for ``legacy_tensorflow``), its Inception networks and its ``frechet_distance`` (KID:
its ``kernel_distance``, called once per subset so that the spread is known too). Samples are
turned into the 8-bit RGB arrays clean-fid would read from PNG files; nfebench only streams the
features into float64 moments (and, for KID / precision-recall, a bounded feature subset), so
shards merge exactly.

Weights are never downloaded. ``clean`` / ``legacy_tensorflow`` load clean-fid's TorchScript
``inception-2015-12-05.pt`` and ``legacy_pytorch`` pytorch-fid's ``pt_inception-2015-12-05-
6726825d.pth``, from ``metrics.extractor_path`` or torch's hub cache. ``metrics.extractor`` may
instead name an nfebench extractor, passed to clean-fid as its custom feature extractor
(resized by the mode's resizer to that extractor's input size).
Named references are clean-fid's precomputed statistics files, read from
``metrics.stats_dir`` (never clean-fid's folder inside site-packages).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from common.errors import NfebenchError
from common.registry import check_choice

from .features import EXTRACTORS, Extractor, build_extractor, file_sha256, to_uint8
from .fid import FIDSuite, package_version
from .references import cache_dir

STATS_URL = "https://www.cs.cmu.edu/~clean-fid/stats"
# mode -> the Inception file it needs, where clean-fid downloads it from, and how it is built.
MODE_WEIGHTS = {
    "clean": ("inception-2015-12-05.pt",
              "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"),
    "legacy_tensorflow": ("inception-2015-12-05.pt",
                          "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"),
    "legacy_pytorch": ("pt_inception-2015-12-05-6726825d.pth",
                       "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"),
}
# mode -> clean-fid make_resizer(library, quantize_after=False, filter) arguments; None: no resize outside the net.
MODE_RESIZE = {"clean": ("PIL", "bicubic"), "legacy_pytorch": ("PyTorch", "bilinear"), "legacy_tensorflow": None}
# reference name -> clean-fid (dataset_name, dataset_split, dataset_res) of its precomputed statistics.
CLEANFID_DATASETS = {
    "cifar10-train": ("cifar10", "train", 32),
    "cifar10-test": ("cifar10", "test", 32),
    "ffhq-1024-trainval70k": ("ffhq", "trainval70k", 1024),
    "ffhq-256-trainval70k": ("ffhq", "trainval70k", 256),
}


def _torchscript_inception(where: Path, mode: str):
    from cleanfid.inception_torchscript import InceptionV3W

    return InceptionV3W(str(where.parent), download=False, resize_inside=(mode == "legacy_tensorflow")).eval()


def _pytorch_inception(where: Path, mode: str):
    import cleanfid.inception_pytorch as ip

    # clean-fid loads pytorch-fid's weights from a URL; point that one call at the local file.
    original = ip.load_state_dict_from_url
    ip.load_state_dict_from_url = lambda url, **kw: torch.load(str(where), map_location="cpu")
    try:
        net = ip.InceptionV3(output_blocks=[3], resize_input=False).eval()
    finally:
        ip.load_state_dict_from_url = original
    return lambda x: net(x / 255)[0].squeeze(-1).squeeze(-1)


NET_BUILDERS = {"clean": _torchscript_inception, "legacy_tensorflow": _torchscript_inception,
                "legacy_pytorch": _pytorch_inception}


class CleanFidExtractor(Extractor):
    """clean-fid preprocessing + network behind nfebench's Extractor contract; the net loads lazily."""

    def __init__(self, name, mode, size, make_net, sha256, file, feature_dim, describe_net):
        self.name, self.mode, self.input_size = name, mode, size
        self.make_net, self.sha256, self.file, self.feature_dim = make_net, sha256, file, feature_dim
        self.num_classes, self.net, self._describe_net = 0, None, describe_net
        self.resizer = self._resizer()

    def _resizer(self):
        spec = MODE_RESIZE[self.mode]
        if spec is None:
            return lambda a: a
        from cleanfid.resize import make_resizer

        return make_resizer(spec[0], False, spec[1], (self.input_size, self.input_size))

    @property
    def resize_mode(self) -> str:
        spec = MODE_RESIZE[self.mode]
        outside = "none outside the network" if spec is None else \
            f"{spec[0]} {spec[1]} on float32 to {self.input_size}x{self.input_size}"
        return f"clean-fid mode={self.mode}: uint8 RGB, resize {outside}; {self._describe_net}"

    def _arrays(self, x: torch.Tensor) -> torch.Tensor:
        """What clean-fid's ResizeDataset yields for the same images read back from 8-bit PNGs."""
        u8 = to_uint8(x, rgb=True)
        out = []
        for img in u8.permute(0, 2, 3, 1).cpu().numpy():
            r = self.resizer(img)
            out.append(torch.from_numpy(np.ascontiguousarray(r, dtype=np.float32)).permute(2, 0, 1))
        return torch.stack(out)

    @torch.no_grad()
    def __call__(self, x):
        if self.net is None:
            self.net = self.make_net()
        return self.net(self._arrays(x)).reshape(len(x), -1), None


def _weights_file(mode, path) -> Path:
    fname, url = MODE_WEIGHTS[mode]
    where = Path(path).expanduser() if path else Path(torch.hub.get_dir()) / "checkpoints" / fname
    if where.is_dir():
        where = where / fname
    if not where.is_file() or where.name != fname:
        raise NfebenchError(f"clean-fid {mode} Inception weights not found: {where}; put {fname} (from {url}) there "
                            f"or pass metrics.extractor_path=/path/to/{fname} (no download is attempted)")
    return where


def _clean_fid_inception(mode, path):
    where = _weights_file(mode, path)
    return CleanFidExtractor("cleanfid-inception", mode, 299, lambda: NET_BUILDERS[mode](where, mode),
                             file_sha256(where), str(where), 2048, f"clean-fid Inception ({where.name})")


def _custom(name, mode, path):
    ours = build_extractor(name, path)
    size = ours.input_size or 299
    return CleanFidExtractor(f"cleanfid-custom-{name}", mode, size, lambda: (lambda x: ours(x / 127.5 - 1)[0]),
                             ours.sha256, ours.file, ours.feature_dim,
                             f"custom_feat_extractor nfebench '{name}' ({ours.resize_mode})")


# metrics.extractor -> builder(mode, path); any nfebench extractor is accepted as a custom one.
CLEANFID_EXTRACTORS = {"inception": _clean_fid_inception}


def build_cleanfid_extractor(name, mode, path):
    check_choice("clean-fid mode", mode, MODE_WEIGHTS)
    check_choice("metrics=clean_fid extractor", name, [*sorted(CLEANFID_EXTRACTORS), *EXTRACTORS])
    return CLEANFID_EXTRACTORS[name](mode, path) if name in CLEANFID_EXTRACTORS else _custom(name, mode, path)


@contextlib.contextmanager
def _seeded_numpy(seed: int):
    """clean-fid's kernel_distance draws from numpy's global generator: seed it, then restore it."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


class CleanFID(FIDSuite):
    suite_name = "clean_fid"
    quantize_fixed = True   # clean-fid reads 8-bit images

    def _backend_options(self, mode="clean", stats_dir=None, **rest) -> dict:
        super()._backend_options(**rest)
        return {"mode": mode, "stats_dir": stats_dir}

    def _build_extractor(self, name, path):
        return build_cleanfid_extractor(name, self.backend["mode"], path)

    def reference_names(self) -> list:
        return sorted(CLEANFID_DATASETS)

    def _stats_file(self, name, suffix=""):
        cname, split, res = CLEANFID_DATASETS[name]
        fname = f"{cname}_{self.backend['mode']}_{split}_{res}{suffix}.npz".lower()
        folder = Path(self.backend["stats_dir"] or cache_dir(self.cache_dir) / "clean-fid").expanduser()
        if not (folder / fname).is_file():
            raise NfebenchError(f"clean-fid statistics for '{name}' not found: {folder / fname} is missing; download "
                                f"{STATS_URL}/{fname} there or set metrics.stats_dir (nothing is downloaded)")
        return folder / fname

    def named_reference(self, name) -> dict:
        if not self.extractor.name.startswith("cleanfid-inception"):
            raise NfebenchError(f"clean-fid's statistics for '{name}' are Inception features; extractor "
                                f"'{self.extractor.name}' needs an image folder or npz reference")
        path = self._stats_file(name)
        with np.load(path) as z:
            ref = {"mu": np.asarray(z["mu"], np.float64), "sigma": np.asarray(z["sigma"], np.float64), "n": None}
        if self.subset_size:
            with np.load(self._stats_file(name, "_kid")) as z:
                ref["subset_feats"] = np.asarray(z["feats"], np.float32)
        return {**ref, "file": str(path), "sha256": file_sha256(path)}

    def _fid(self, mu, sigma, ref) -> float:
        from cleanfid.fid import frechet_distance

        return frechet_distance(mu, sigma, ref["mu"], ref["sigma"])

    def _kid(self, gen, ref) -> dict:
        from cleanfid.fid import kernel_distance

        gen, ref = gen.astype(np.float64), ref.astype(np.float64)
        # kernel_distance returns only the mean over its subsets; one call per subset draws the same
        # subsets from the seeded generator and also gives their spread (np.std, as torch-fidelity)
        with _seeded_numpy(2020):
            per_subset = [kernel_distance(gen, ref, 1, self.kid_opts["kid_subset_size"])
                          for _ in range(self.kid_opts["kid_subsets"])]
        return {"kid_mean": float(np.mean(per_subset)), "kid_std": float(np.std(per_subset))}

    def _kid_prc_implementation(self) -> dict:
        out = {"kid": f"clean-fid {package_version('clean-fid')} kernel_distance"} if self.kid else {}
        return {**out, "precision_recall": f"torch-fidelity {package_version('torch-fidelity')}"} if self.prc else out

    def implementation(self) -> dict:
        return {"name": "clean-fid", "version": package_version("clean-fid"), "mode": self.backend["mode"],
                "details": "clean-fid resizer + network + frechet_distance on nfebench's streamed float64 moments",
                **self._kid_prc_implementation(), "versions": {"torch": torch.__version__}}
