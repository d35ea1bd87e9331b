"""The tiny world: Fashion-MNIST images as MAR tokens, without a VAE.

A 28x28 image is padded to 32x32 with background, scaled to [-1, 1], and cut into the model's patches:
for the tiny model an 8x8 grid of 4x4 pixel patches, 64 tokens of 16 values (the token width of MAR's
KL-16 latents); for tiny16 a 16x16 grid of 2x2 patches (256 tokens, ImageNet MAR's sequence length).
"""
import torch.nn.functional as F

from gtr.data import load_fashion_mnist

PAD = 2  # 28 + 2 * 2 = 32


def images_to_pixels(images_uint8):
    """(N, 28, 28) uint8 -> (N, 1, 32, 32) float in [-1, 1], padded with the background value -1."""
    x = images_uint8.float().div(127.5).sub(1.0)[:, None]
    return F.pad(x, (PAD, PAD, PAD, PAD), value=-1.0)


def load_tokens(model, split="train"):
    """All images of a split as `model`'s tokens (N, L, C) and labels (N,): (N, 64, 16) for the 8x8 tiny
    model, (N, 256, 4) for the 16x16 one."""
    images, labels = load_fashion_mnist(split)
    return model.patchify(images_to_pixels(images)), labels
