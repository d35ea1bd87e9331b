"""Train a small MAR with MAR's objective (tiny world: Fashion-MNIST tokens), in resumable chunks.

    python scripts/train.py --out results/tiny_mar --minutes 30        # one chunk; run again to continue

Each chunk resumes from <out>/checkpoint-last.pth (model, EMA, optimizer, data order, RNG state),
trains until --minutes or --steps is reached, and saves atomically, so a killed run loses at most
--save-every steps. The EMA follows a warm-up (decay (1+n)/(10+n), capped): with few thousand steps a
fixed 0.9999 EMA would still hold the random initialisation, whose samples diverge.
"""
import argparse
import json
import math
import os
import sys
import time

import torch

from gtr.config import ConfigError
from gtr.models.mar import build_mar
from gtr.runs import pick_device
from gtr.tiny import load_tokens


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mar_tiny")
    p.add_argument("--out", default="results/tiny_mar")
    p.add_argument("--steps", type=int, default=2000, help="total optimiser steps of the whole run")
    p.add_argument("--minutes", type=float, default=None, help="stop this chunk after this many minutes")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--weight-decay", type=float, default=0.02)
    p.add_argument("--grad-clip", type=float, default=3.0)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (the randomness is drawn on the "
                   "CPU either way: the same data order, masks and noise on any device)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16 autocast (about 2x faster on CPUs with avx512_bf16)")
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--limit-data", type=int, default=None, help="use only the first N training images (tests)")
    p.add_argument("--export-only", action="store_true",
                   help="only write <out>/tiny_mar_ema.pth (EMA weights) and train_config.json from the checkpoint")
    return p.parse_args(argv)


def export(out):
    """Write the slim sampling checkpoint <out>/tiny_mar_ema.pth ({"model_ema": EMA weights}, loadable
    with gtr.checkpoints.load_mar) and <out>/train_config.json from <out>/checkpoint-last.pth."""
    state = torch.load(os.path.join(out, "checkpoint-last.pth"), map_location="cpu", weights_only=False)
    slim = {"model_ema": state["model_ema"], "step": state["step"], "model_name": state["model_name"],
            "config": state["config"]}
    save_atomic(slim, os.path.join(out, "tiny_mar_ema.pth"))
    with open(os.path.join(out, "train_config.json"), "w") as f:
        json.dump({"model_name": state["model_name"], "config": state["config"], "args": state["args"],
                   "step": state["step"]}, f, indent=1)
    print(f"exported {os.path.join(out, 'tiny_mar_ema.pth')} (EMA weights at step {state['step']})", flush=True)


def learning_rate(step, args):
    """Linear warm-up, then cosine decay to min_lr over the whole run."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * progress))


def save_atomic(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.export_only:
        return export(args.out)
    try:
        device = pick_device(args.device)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint-last.pth")
    log_path = os.path.join(args.out, "train_log.jsonl")

    model = build_mar(args.model)
    generator = torch.Generator().manual_seed(args.seed)
    model.initialize_weights(generator)
    ema = build_mar(args.model)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    model.to(device)
    ema.to(device)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "pos_embed" in name or "token" in name or "latent" in name else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    step, epoch_order, epoch_pos = 0, None, 0
    if os.path.exists(ckpt_path):
        try:
            state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        except Exception as e:
            sys.exit(f"cannot read {ckpt_path} to resume ({e}); move it away to start afresh")
        if state.get("model_name") != args.model:
            sys.exit(f"{ckpt_path} holds model {state.get('model_name')!r}, not {args.model!r}")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["model_ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, epoch_order, epoch_pos = state["step"], state["epoch_order"], state["epoch_pos"]
        print(f"resumed {ckpt_path} at step {step}", flush=True)

    tokens, labels = load_tokens(model, "train")
    if args.limit_data:
        tokens, labels = tokens[:args.limit_data], labels[:args.limit_data]
    n = tokens.shape[0]

    def checkpoint():
        save_atomic({"model": model.state_dict(), "model_ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                     "generator": generator.get_state(), "step": step, "epoch_order": epoch_order,
                     "epoch_pos": epoch_pos, "model_name": args.model, "config": model.config_dict(),
                     "args": vars(args)}, ckpt_path)

    start, last_log, losses = time.time(), time.time(), []
    model.train()
    while step < args.steps:
        if args.minutes is not None and time.time() - start > args.minutes * 60:
            break
        if epoch_order is None or epoch_pos + args.batch_size > n:
            epoch_order, epoch_pos = torch.randperm(n, generator=generator), 0
        idx = epoch_order[epoch_pos:epoch_pos + args.batch_size]
        epoch_pos += args.batch_size
        lr = learning_rate(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(tokens[idx].to(device), labels[idx].to(device), generator=generator)
        if not torch.isfinite(loss):
            sys.exit(f"loss is {loss.item()} at step {step}; stopping (last checkpoint kept)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        step += 1
        rate = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.mul_(rate).add_(p.detach(), alpha=1 - rate)
        losses.append(loss.item())
        if step % args.log_every == 0 or step == args.steps:
            elapsed = time.time() - last_log
            record = {"step": step, "epoch": round(step * args.batch_size / n, 3), "loss": sum(losses) / len(losses),
                      "lr": lr, "img_per_s": round(len(losses) * args.batch_size / elapsed, 1),
                      "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
            losses, last_log = [], time.time()
        if step % args.save_every == 0:
            checkpoint()
    checkpoint()
    print(f"saved {ckpt_path} at step {step}", flush=True)
    if step >= args.steps:
        export(args.out)


if __name__ == "__main__":
    main()
