"""What decides CSpD's acceptance on the tiny world: the trajectory factor F and the bare last-step ratio p/q.

    python scripts/cspd_acceptance.py [--draft tiny_draft] [--images 8] [--num-draft 4]

Samples `--images` images with the tiny MAR as target and the draft (a configs/model name) at 16 AR steps,
and prints, over every judged token, the 5/50/95% quantiles of log F (F = exp(sum of log std_target -
log std_draft over channels and earlier diffusion steps)) and of p/q without F, and the hook's counts.
"""
import argparse

import torch

import baselines.cspd as cspd
from eval.official import patched
from gtr.config import compose
from gtr.load import build_model
from gtr.method import ConstantSteps, CosineCounts, Method, RandomOrder
from gtr.sampler import image_generator, sample


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draft", default="tiny_draft")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--num-draft", type=int, default=4)
    args = p.parse_args()
    cfg = compose(["model=tiny"])
    cfg = cfg[0] if isinstance(cfg, list) else cfg
    target = build_model(cfg.model)
    method = Method(RandomOrder(), CosineCounts(16), ConstantSteps(100, cfg.model.clip_timesteps),
                    cspd.DraftCache(args.draft, 0.15), "cspd", cspd.CSpDVerify(0.15, args.num_draft))
    log_f, bare = [], []
    acceptance = cspd.acceptance

    def recorded(x, draft, tgt, widen):
        log_f.append((tgt["log_std"] - draft["log_std"]).sum(-1))
        value = acceptance(x, draft, tgt, widen)
        bare.append(value / torch.exp(log_f[-1]))
        return value
    with torch.no_grad(), patched(cspd, "acceptance", recorded):
        sample(target, method, torch.arange(args.images) % 10, [image_generator(0, i) for i in range(args.images)],
               cfg=cfg.cfg)
    q = torch.tensor([0.05, 0.5, 0.95])
    print(f"draft {args.draft}, {args.images} images, window {args.num_draft}: log F 5/50/95% "
          f"{[round(float(v), 1) for v in torch.cat(log_f).quantile(q)]}, p/q without F "
          f"{[round(float(v), 3) for v in torch.cat(bare).quantile(q)]}, {method.verify.stats()}")


if __name__ == "__main__":
    main()
