"""A small Fashion-MNIST CNN used to judge tiny-world samples.

It gives (a) class accuracy of class-conditional samples and (b) a torch-fidelity feature
extractor, "fmnist-classifier", whose penultimate layer ("feat", 128-d) serves FID and whose
logits (10 classes) serve IS — an Inception-free FID/IS in this classifier's feature space.
Weights: eval/weights/fmnist_classifier.pt, trained by scripts/train_classifier.py.

Inputs accepted everywhere (see `preprocess`): 28x28 or 32x32 (28x28 padded by 2 on each side,
as the tiny-world images are), 1 or 3 equal channels, uint8 in [0, 255] or float in [-1, 1].
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import torch_fidelity
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "fmnist_classifier.pt"
EXTRACTOR_NAME = "fmnist-classifier"
ARCH = "fmnist-cnn-v1"  # bump when FmnistCNN changes so that old weight files are refused
FEAT_DIM = 128


class FmnistCNN(nn.Module):
    """Conv-BN-ReLU stack on 1x32x32 in [-1, 1]; 128-d penultimate features, 10 logits."""

    def __init__(self):
        super().__init__()

        def block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.body = nn.Sequential(
            *block(1, 16), nn.MaxPool2d(2),                     # 16x16
            *block(16, 32), *block(32, 32), nn.MaxPool2d(2),    # 8x8
            *block(32, 64), nn.MaxPool2d(2),                    # 4x4
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * 16, FEAT_DIM), nn.ReLU())
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(FEAT_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (post-ReLU) features, (N, 128)."""
        return self.fc(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))


def preprocess(images) -> torch.Tensor:
    """Bring images to the classifier's input: float (N, 1, 32, 32) in [-1, 1].

    Accepts a tensor or numpy array shaped (N, H, W) or (N, C, H, W) with C = 1 or 3 (3 channels
    are averaged: PNGs of grayscale samples come back as RGB), H = W = 28 (padded by 2 on each
    side with black, as the tiny-world data are made) or 32. uint8 means [0, 255]; floats are
    taken to be in [-1, 1] (model output) and clipped to it, as writing a PNG would.
    """
    x = torch.as_tensor(images)
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W) or (N, 1|3, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1.0
    elif x.is_floating_point():
        x = x.float().clamp(-1.0, 1.0)
    else:
        raise ValueError(f"images must be uint8 in [0, 255] or float in [-1, 1], got dtype {x.dtype}")
    x = x.mean(dim=1, keepdim=True)
    size = tuple(x.shape[-2:])
    if size == (28, 28):
        x = F.pad(x, (2, 2, 2, 2), value=-1.0)  # black border, as in the tiny-world 32x32 images
    elif size != (32, 32):
        raise ValueError(f"images must be 28x28 or 32x32, got {size[0]}x{size[1]}")
    return x


def load_classifier(path=None, device="cpu") -> FmnistCNN:
    """Load the trained classifier (eval mode). Default weights: eval/weights/fmnist_classifier.pt."""
    path = Path(path) if path is not None else WEIGHTS_PATH
    if not path.is_file():
        raise FileNotFoundError(f"classifier weights {path} not found; train them with "
                                "`python scripts/train_classifier.py` (a few CPU minutes)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("arch") != ARCH:
        raise ValueError(f"{path} is not a {ARCH} checkpoint; retrain with scripts/train_classifier.py")
    model = FmnistCNN()
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval().requires_grad_(False)


def weights_fingerprint(path=None) -> str:
    """Short sha256 of the weight file: cached reference stats are keyed by it."""
    path = Path(path) if path is not None else WEIGHTS_PATH
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@torch.no_grad()
def classify(images, model: FmnistCNN | None = None, batch_size: int = 1000) -> torch.Tensor:
    """Logits (N, 10) for images in any format `preprocess` accepts."""
    model = model if model is not None else load_classifier()
    device = next(model.parameters()).device
    x = preprocess(images)
    return torch.cat([model(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


def class_accuracy(images, labels, model: FmnistCNN | None = None) -> float:
    """Fraction of images whose predicted class equals `labels` (e.g. the class they were sampled for)."""
    labels = torch.as_tensor(labels).long()
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
    return (classify(images, model).argmax(dim=1) == labels).float().mean().item()


class FmnistFeatureExtractor(torch_fidelity.FeatureExtractorBase):
    """torch-fidelity feature extractor: "feat" (128-d, for FID/KID/PRC) and "logits" (for IS).

    Takes what torch-fidelity feeds every extractor: uint8 (N, 3, H, W); grayscale 1-channel
    input and float input in [-1, 1] work too (see `preprocess`).
    """

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.net = load_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        return "feat", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "feat", "kid": "feat", "prc": "feat"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    def forward(self, x):
        x = preprocess(x).to(next(self.net.parameters()).device)
        feat = self.net.features(x)
        out = {"feat": feat, "logits": self.net.head(feat)}
        return tuple(out[name].float() for name in self.features_list)


def register() -> None:
    """Register "fmnist-classifier" with torch-fidelity (idempotent: torch-fidelity refuses twice)."""
    if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(EXTRACTOR_NAME, FmnistFeatureExtractor)


register()


def fmnist_reference_stats(layer: str = "feat", weights_path=None, cache_dir=None) -> Path:
    """Path of an .npz with `mu`/`sigma` of the Fashion-MNIST test set (10k) in classifier space.

    Computed once and cached (keyed by the weights' hash) under $GTR_CACHE_DIR or
    ~/.cache/gtr-bench. Use it as `eval.fid.evaluate(samples, ref_stats_path=<this>,
    feature_extractor="fmnist-classifier")`.
    """
    from eval.fid import compute_statistics, save_stats  # local: eval.fid imports this module lazily
    from gtr.data import load_fashion_mnist

    weights_path = Path(weights_path) if weights_path is not None else WEIGHTS_PATH
    cache_dir = Path(cache_dir or os.environ.get("GTR_CACHE_DIR", Path.home() / ".cache" / "gtr-bench"))
    path = cache_dir / f"fmnist_test_{EXTRACTOR_NAME}_{layer}_{weights_fingerprint(weights_path)}.npz"
    if not path.is_file():
        images, _ = load_fashion_mnist("test")
        mu, sigma = compute_statistics(images[:, None], feature_extractor=EXTRACTOR_NAME, layer=layer,
                                       feature_extractor_weights_path=str(weights_path))
        save_stats(path, mu, sigma, feature_extractor=EXTRACTOR_NAME, layer=layer)
    return path
