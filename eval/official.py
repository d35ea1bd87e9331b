"""Helpers of the scripts that compare gtr-bench with official code (scripts/verify_*.py): importing an
official checkout, random weights, recording and replaying its random draws, and reporting differences.
"""
import contextlib
import importlib
import os
import sys

import torch


def import_official(path, module="models.mar", repo="LTH14/mar", cuda=False):
    """The official `module` imported from the checkout at `path`; its CUDA calls made no-ops unless `cuda`
    (to run it on a GPU, as released)."""
    if not os.path.isfile(os.path.join(path, *module.split(".")) + ".py"):
        sys.exit(f"{path} is not a {repo} checkout ({module.replace('.', '/')}.py missing)")
    if not cuda:
        torch.Tensor.cuda = lambda self, *a, **k: self  # the official code calls .cuda() everywhere
    sys.path.insert(0, path)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:  # e.g. timm, which the official code imports and gtr-bench does not need
        sys.exit(f"error: the official code at {path} needs the package {e.name!r}: "
                 f"{os.path.relpath(sys.executable)} -m pip install {e.name}")


def perturb(model, generator, scale=0.02):
    """Give every parameter random values so zero-initialised layers are exercised too."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def check(name, ours, theirs, tol, failures):
    """Compare to the official values: ok when max|diff| <= tol * max(1, max|official|) (tol 0: bitwise)."""
    diff = (ours.float() - theirs.float()).abs().max().item()
    scale = theirs.float().abs().max().item()
    ok = diff <= tol * max(1.0, scale)
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max|diff| {diff:.3e} (max|value| {scale:.3e})", flush=True)
    if not ok:
        failures.append(name)


def measures(ours, theirs):
    """max |a - b| and max |a - b| / (|b| + 1)."""
    diff = (ours.double() - theirs.double()).abs()
    return diff.max().item(), (diff / (theirs.double().abs() + 1)).max().item()


def report(name, ours, theirs, tol, failures, note=""):
    """Compare to the official values: ok when max|diff| / (|official| + 1) <= tol; returns that ratio."""
    diff, rel = measures(ours, theirs)
    ok = rel <= tol
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max|diff| {diff:.3e}, max|diff|/(|official|+1) {rel:.3e} "
          f"(max|official| {theirs.abs().max().item():.3e}){note}", flush=True)
    if not ok:
        failures.append(name)
    return rel


def info(text):
    """A line that informs and checks nothing."""
    print(f"info {text}", flush=True)


@contextlib.contextmanager
def patched(obj, name, value):
    """obj.name = value inside the block, restored after."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


class Recorder:
    """Record every torch.randn / randn_like the official sampler draws, in order."""

    def __init__(self):
        self.draws = []

    def __enter__(self):
        self.randn, self.randn_like = torch.randn, torch.randn_like

        def randn(*a, **k):
            out = self.randn(*a, **k)
            self.draws.append(out.clone())
            return out

        def randn_like(x, **k):
            out = self.randn_like(x, **k)
            self.draws.append(out.clone())
            return out
        torch.randn, torch.randn_like = randn, randn_like
        return self

    def __exit__(self, *exc):
        torch.randn, torch.randn_like = self.randn, self.randn_like
