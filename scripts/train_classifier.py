"""Train the Fashion-MNIST judge classifier (eval/classifier.py) on CPU.

    python scripts/train_classifier.py            # defaults: 3 epochs, 2 threads, seed 0

Writes eval/weights/fmnist_classifier.pt and a log (command, epochs, test accuracy, time) next
to it. Images enter as the tiny-world sees them: 28x28 padded to 32x32, [-1, 1]. Light
augmentation (shift by up to 2 px, horizontal flip) makes the judge less brittle on samples.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from eval.classifier import ARCH, WEIGHTS_PATH, FmnistCNN, preprocess
from gtr.data import load_fashion_mnist


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shift (up to 2 px, black fill) and horizontal flip of (N, 1, 32, 32) images."""
    n = len(x)
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dy, dx = torch.randint(0, 5, (2,), generator=gen).tolist()  # one shift per batch: cheap
    x = padded[:, :, dy:dy + 32, dx:dx + 32]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@torch.no_grad()
def accuracy(model, x, y, batch_size=1000) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    p.add_argument("--max-steps", type=int, default=0, help="stop early (for timing runs); 0 = no limit")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    x_train, x_test = preprocess(x_train), preprocess(x_test)

    model = FmnistCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total = args.epochs * steps_per_epoch
    # cosine decay to 0 over the run: a short run still ends at a low learning rate
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))

    lines = [f"command: python {' '.join(sys.argv)}",
             f"arch {ARCH}, params {sum(p.numel() for p in model.parameters())}, epochs {args.epochs}, "
             f"batch {args.batch_size}, AdamW lr {args.lr} cosine, seed {args.seed}, threads {args.threads}, "
             f"torch {torch.__version__}"]
    print(lines[0], lines[1], sep="\n", flush=True)
    t0, step = time.time(), 0
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(x_train), args.batch_size):
            idx = perm[i:i + args.batch_size]
            loss = F.cross_entropy(model(augment(x_train[idx], gen)), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 100 == 0:
                print(f"step {step}/{total} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
            if args.max_steps and step >= args.max_steps:
                print(f"{step} steps in {time.time() - t0:.1f}s")
                return
        acc = accuracy(model, x_test, y_test)
        lines.append(f"epoch {epoch + 1}: last loss {loss.item():.4f}, test accuracy {acc:.4f}, "
                     f"elapsed {time.time() - t0:.0f}s")
        print(lines[-1], flush=True)

    lines.append(f"final test accuracy (10000 test images): {acc:.4f}; training time {time.time() - t0:.0f}s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"arch": ARCH, "model": model.state_dict(), "test_accuracy": acc}, args.out)
    args.out.with_suffix(".log").write_text("\n".join(lines) + "\n")
    print(lines[-1], f"saved {args.out}", sep="\n")


if __name__ == "__main__":
    main()
