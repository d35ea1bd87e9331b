"""The sampling engine against the official code, on this CPU, in one process (make bench-engine).

    python scripts/bench_engine.py --official PATH/TO/LTH14-mar            # make bench-engine OFFICIAL=PATH
    python scripts/bench_engine.py --steps 16 --throughput-batch 0         # ours only, a quick look
    python scripts/bench_engine.py --device cuda --official PATH            # on a GPU: batch 1 and 256

One random MAR (MAR-B by default; every parameter random, so no layer is zero) is run by the official
`sample_tokens` (fp32, as released) and by gtr's sampler with engine=reference and engine=fast, one after
the other for each setting (batch 1; --steps AR steps; 100 diffusion steps; cfg 3.0 linear), timing the
components: transformer (encoder + decoder), head (network calls; for the fast engine also its adaLN
modulation GEMMs), and the rest (diffusion arithmetic, gathers, Python). From them: the head's achieved
weight traffic (GB/s: the bytes one network call reads x calls / the calls' seconds) and the transformer's
and the head's achieved GFLOP/s (FLOPs counted by eval/cost.py), beside this machine's streaming bandwidth
and matmul peaks measured in the same run, and the issue's targets. --throughput-batch B times one AR
step's components at batch B (the transformer once, one 100-step head chain), for throughput. Last, a
torch.profiler breakdown of the fast systems' transformer (linear GEMMs, attention, the rest) with the
GFLOP/s the GEMMs reach at their own shapes, and of one per-step head call (its linear layers alone vs
the whole call, as weight traffic).

--device cuda: the GPU benchmark instead (cuda_bench): the official code and ours on engine=reference, fast
and graphs (CUDA graphs), fp32 and under the official fp16 autocast, at batch 1 and at --batches (256),
with peak memory and whether graphs gives fast's tokens -> <out>/bench_cuda.md.

bf16: on a CPU with bf16 instructions (avx512_bf16 / AMX) two more systems run: ours with the model cast
(`model.to(torch.bfloat16)`, engine=fast) and the official code under CPU bf16 autocast; elsewhere a line
says why not. Results: <out>/bench.md and bench.json, with the command.
"""
import argparse
import copy
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from eval.cost import count_flops
from eval.official import import_official, perturb
from gtr.engine import FastHeadLoop, cpu_has_bf16, head_loop, prepare
from gtr.method import PlainHead, mar
from gtr.models.diffusion import sampling_diffusion
from gtr.models.mar import build_mar
from gtr.runs import device_name, git_commit
from gtr.sampler import image_generator, sample

HEAD = {"mar_base": (6, 1024), "mar_large": (8, 1280), "mar_huge": (12, 1536)}


def machine_peaks():
    """This machine's fp32 and bf16 matmul rate (GFLOP/s, 2048^3) and streaming read bandwidth (GB/s,
    a 512 MB sum), at the current thread count."""
    def best(fn, seconds=1.0):  # the fastest of repeats over about `seconds` (a short probe is noisy)
        fn()
        times, start = [], time.perf_counter()
        while len(times) < 3 or time.perf_counter() - start < seconds:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
        return min(times)
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        size = 2048 if dtype == torch.float32 or cpu_has_bf16() else 256  # bf16 emulation crawls: probe small
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        peaks[f"matmul_{name}_GFLOPs"] = 2 * size ** 3 / best(lambda: a @ b) / 1e9
    x = torch.randn(128 * 1024 * 1024)
    peaks["stream_GBs"] = x.numel() * 4 / best(x.sum) / 1e9
    return peaks


class Timer:
    """Wraps callables to add their wall time and call count to a slot."""

    def __init__(self):
        self.seconds, self.calls = {}, {}

    def wrap(self, slot, fn):
        self.seconds.setdefault(slot, 0.0)
        self.calls.setdefault(slot, 0)

        def run(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds[slot] += time.perf_counter() - start
            self.calls[slot] += 1
            return out
        return run


def run_official(theirs, steps, batch, cfg, autocast=None):
    """The official sample_tokens, fp32 or under `autocast` (a dtype), its components timed."""
    timer = Timer()
    original = theirs.forward_mae_encoder, theirs.forward_mae_decoder, theirs.diffloss.net.forward
    theirs.forward_mae_encoder = timer.wrap("transformer", original[0])
    theirs.forward_mae_decoder = timer.wrap("transformer", original[1])
    theirs.diffloss.net.forward = timer.wrap("head", original[2])
    try:
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            official_tokens(theirs, batch, steps, cfg, torch.arange(batch) % 1000)
        total = time.perf_counter() - start
    finally:
        theirs.forward_mae_encoder, theirs.forward_mae_decoder = original[0], original[1]
        del theirs.diffloss.net.forward
    return total, timer


def run_ours(model, engine, steps, batch, cfg):
    """gtr's sampler on `model` (already prepared for `engine`), its components timed."""
    timer = Timer()
    loop = head_loop(model, engine)
    model.condition = timer.wrap("transformer", type(model).condition.__get__(model))
    if isinstance(loop, FastHeadLoop):
        loop.net_out = timer.wrap("head", loop.net_out)
        loop.modulations = timer.wrap("modulations", loop.modulations)
    else:
        model.head = timer.wrap("head", type(model).head.__get__(model))
    try:
        start = time.perf_counter()
        sample(model, mar(steps, 100), torch.arange(batch) % 1000, [image_generator(0, i) for i in range(batch)],
               cfg=cfg, head_loop=loop)
        total = time.perf_counter() - start
    finally:
        del model.condition
        model.__dict__.pop("head", None)
    return total, timer


def head_weights(model, dtype):
    """Bytes of the head's weights in `dtype` ("bf16" or fp32): (all, which a reference call reads; those a
    fast engine's per-step call reads: input projection, each block's norm and MLP, the final linear layer,
    not the adaLN modulations, the time and the z embeddings, which it computes once per chain)."""
    size = 2 if dtype == "bf16" else 4
    net = model.diffloss.net
    per_step = [net.input_proj, *(m for b in net.res_blocks for m in (b.in_ln, b.mlp)), net.final_layer.norm_final,
                net.final_layer.linear]
    return (sum(p.numel() for p in net.parameters()) * size,
            sum(p.numel() for m in per_step for p in m.parameters()) * size)


def row(system, dtype, steps, batch, total, timer, weights, transformer_flops, head_flops, peaks):
    """One system's record; efficiency against this dtype's measured peaks. `weights`: head_weights in the
    dtype whose bytes a call reads (autocast reads fp32 weights and casts them). The head's time: its
    network calls (and the fast engine's modulation GEMMs); its traffic: the weights each call reads."""
    head_calls, mod_calls = timer.calls.get("head", 0), timer.calls.get("modulations", 0)
    step_s, mod_s = timer.seconds.get("head", 0.0), timer.seconds.get("modulations", 0.0)
    head_s, trans_s = step_s + mod_s, timer.seconds.get("transformer", 0.0)
    read = weights[1] if mod_calls else weights[0]  # bytes of one network call
    gbs = read * head_calls / step_s / 1e9 if step_s else None
    gflops = transformer_flops * batch / trans_s / 1e9 if trans_s else None
    peak = peaks["matmul_bf16_GFLOPs" if "bf16" in dtype else "matmul_fp32_GFLOPs"]
    return {"system": system, "dtype": dtype, "ar_steps": steps, "batch": batch, "seconds": total,
            "seconds_per_image": total / batch, "transformer_s": trans_s, "head_s": head_s,
            "head_network_s": step_s, "modulations_s": mod_s, "modulation_calls": mod_calls,
            "rest_s": total - head_s - trans_s, "head_calls": head_calls, "head_GBs": gbs,
            "head_bandwidth_fraction": gbs / peaks["stream_GBs"] if gbs else None,
            "head_GFLOPs": head_flops * batch / head_s / 1e9 if head_s else None,
            "transformer_GFLOPs": gflops,
            "transformer_peak_fraction": gflops / peak if gflops else None,
            "peak_rss_GB_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def throughput(systems, theirs, batch, cfg, steps=64):
    """One AR step's components at `batch` images (the first step of a `steps`-step run: the transformer
    on the class buffer only, then one 100-step head chain for its tokens), per system.
    `systems`: {name: (model, engine)} of ours; the official code runs fp32 (and under bf16 autocast
    where this CPU has bf16 instructions)."""
    model = next(iter(systems.values()))[0]
    n = mar(steps).counts((model.seq_h, model.seq_w))[0]
    g = torch.Generator().manual_seed(0)
    tokens = torch.zeros(2 * batch, model.seq_len, model.token_dim)
    known = torch.zeros(2 * batch, 0, dtype=torch.long)
    labels = torch.arange(batch) % 1000
    z = torch.randn(batch * n, model.config.width, generator=g)
    noise = torch.randn(batch * n, 101, model.token_dim, generator=g)
    out = {}
    runs = [(f"official {a}", lambda a=a: official_step(theirs, tokens, labels, z, a)) for a in official_dtypes(theirs)]
    runs += [(name, lambda m=m, e=e: our_step(m, e, tokens, known, labels, z, noise)) for name, (m, e) in systems.items()]
    with torch.no_grad():
        for name, fn in runs:
            (transformer_s, head_s) = fn()
            out[name] = {"batch": batch, "tokens_per_image": n, "transformer_s": transformer_s, "head_chain_s": head_s}
    return out


def transformer_breakdown(systems, known_counts=(0, 64, 128, 192, 252)):
    """Where the fast systems' transformer time goes (torch.profiler, self CPU time): the linear layers'
    GEMMs, attention, and the rest (layer norms, GELU, adds, gathers), at batch 1 under guidance, one
    encoder + decoder pass at each of `known_counts` known tokens. The GEMMs' FLOPs are counted from the
    rows each block's linear layers see, so their GFLOP/s is what the matmul kernels reach at these
    shapes: the ceiling of the transformer's share of the matmul peak. (The GEMM time also holds the two
    small projections outside the blocks, z_proj and decoder_embed, whose FLOPs are not counted: < 1% on
    MAR-B, so the rate is that much low.)"""
    out = {}
    for name, (model, _) in systems.items():
        if not name.startswith("fast"):
            continue
        dtype = model.fake_latent.dtype
        gemm_flops = [0]

        def count(block, inputs, output):  # per block, as its linears may run fused (prepare's GELU MLP)
            rows = inputs[0].numel() // inputs[0].shape[-1]
            gemm_flops[0] += 2 * rows * sum(m.in_features * m.out_features for m in block.modules()
                                            if isinstance(m, torch.nn.Linear))

        blocks = [*model.encoder_blocks, *model.decoder_blocks]
        emb = torch.cat([model.embed_condition(torch.tensor([0])), model.unconditional_embedding(1)]).to(dtype)
        calls = [(torch.randn(2, model.seq_len, model.token_dim, generator=torch.Generator().manual_seed(k)).to(dtype),
                  torch.arange(k).expand(2, -1)) for k in known_counts]
        with torch.no_grad():
            for tokens, known in calls:  # warm-up
                model.condition(tokens, known, emb)
            hooks = [b.register_forward_hook(count) for b in blocks]
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for tokens, known in calls:
                    model.condition(tokens, known, emb)
            for h in hooks:
                h.remove()
        parts = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
        for event in prof.key_averages():
            kind = ("attention" if "scaled_dot_product" in event.key else
                    "gemm" if event.key in ("aten::addmm", "aten::mm", "mkldnn::_linear_pointwise") else "other")
            parts[kind] += event.self_cpu_time_total / 1e6
        total = sum(parts.values())
        out[name] = {"dtype": str(dtype).replace("torch.", ""), "known_counts": list(known_counts),
                     "profiled_s": total, **{f"{k}_share": v / total for k, v in parts.items()},
                     "gemm_GFLOPs": gemm_flops[0] / parts["gemm"] / 1e9}
    return out


def cuda_bench(model, theirs, steps_list, batches, cfg, on_row=None):
    """The engines on a CUDA GPU against the official code, in one process, on the same random weights:
    seconds per image (synchronised around each whole sample) and memory of the official sample_tokens
    and of ours on engine=reference, fast and graphs. Settings, in this order: batch 1 at the first of
    `steps_list` AR steps, fp32 and under the official fp16 autocast (LTH14/mar engine_mar.py); each of
    `batches` images at those steps, fp16 autocast; batch 1 at the other steps, fp16 autocast.
    engine=graphs first captures its graphs for every setting (`graphs capturing`, timed), so that no
    capture (which empties the allocator's cache) falls between the timed runs; then each setting runs
    official, reference, fast and graphs (replaying), once each, after a warm-up at 2 AR steps. graphs'
    tokens are compared with fast's bit for bit. on_row(rows) is called after every row (a cut run keeps
    what it measured). Memory: the peak allocated above what was allocated before the run (a replay's
    graph pool is not counted there) and what the allocator holds after it (graph pools included)."""
    device = model.fake_latent.device
    cuda = device.type == "cuda"  # (on the CPU it runs too, for the tests: graphs is then fast, no memory figures)
    loops = {engine: prepare(model, engine) for engine in ("reference", "fast", "graphs")}

    def timed(fn, dtype):
        before = None
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=dtype != "fp32"):
            out = fn()
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        memory = ((torch.cuda.max_memory_allocated(device) - before) / 1e9, torch.cuda.memory_reserved(device) / 1e9) \
            if cuda else (None, None)
        return seconds, memory, out

    def runs(batch, steps):
        labels = torch.arange(batch, device=device) % 1000
        ours = lambda engine: lambda: sample(model, mar(steps, 100), labels, [image_generator(0, i) for i in range(batch)],
                                             cfg=cfg, head_loop=loops[engine])
        official = [] if theirs is None else [("official", lambda: official_tokens(theirs, batch, steps, cfg, labels))]
        return dict(official + [("reference", ours("reference")), ("fast", ours("fast")), ("graphs", ours("graphs"))])

    for dtype in ("fp32", "fp16-autocast"):  # warm-up: kernels, cuBLAS, the allocator
        for fn in runs(1, 2).values():
            timed(fn, dtype)
    settings = [(1, steps_list[0], "fp32"), (1, steps_list[0], "fp16-autocast")]
    settings += [(batch, steps_list[0], "fp16-autocast") for batch in batches]
    settings += [(1, steps, "fp16-autocast") for steps in steps_list[1:]]
    rows = []

    def bitwise(a, b):
        return torch.equal(a.float().view(torch.int32), b.float().view(torch.int32))

    def add(name, batch, steps, dtype, seconds, memory, tokens, fast=None, capturing=None):
        finite = float(torch.isfinite(tokens.float()).float().mean())
        same = None if fast is None else bitwise(tokens, fast)
        rows.append({"system": name, "dtype": dtype, "ar_steps": steps, "batch": batch, "seconds": seconds,
                     "seconds_per_image": seconds / batch, "peak_allocated_GB": memory[0], "reserved_GB": memory[1],
                     "finite_fraction": finite, "same_tokens_as_fast": same,
                     "same_capturing_tokens_as_fast": None if fast is None else bitwise(capturing, fast)})
        print(f"{steps:3d} AR steps  batch {batch:<4} {name:<17} {dtype:<13} {seconds:8.3f} s  peak {_gb(memory[0])} GB  "
              f"finite {finite:.3f}" + ("" if same is None else f"  same tokens as fast: {same}"), flush=True)
        if on_row is not None:
            on_row(rows)

    captured = {}
    for batch, steps, dtype in settings:  # graphs' captures first, kept to compare with fast below
        seconds, memory, captured[(batch, steps, dtype)] = timed(runs(batch, steps)["graphs"], dtype)
        add("graphs capturing", batch, steps, dtype, seconds, memory, captured[(batch, steps, dtype)])
    for batch, steps, dtype in settings:
        tokens = {}
        for name, fn in runs(batch, steps).items():
            seconds, memory, tokens[name] = timed(fn, dtype)
            if name == "graphs":
                add(name, batch, steps, dtype, seconds, memory, tokens[name], tokens["fast"], captured[(batch, steps, dtype)])
            else:
                add(name, batch, steps, dtype, seconds, memory, tokens[name])
    return rows


def official_tokens(theirs, batch, steps, cfg, labels):
    """The official sample_tokens as the bench runs it (its global seed 0, cfg linear, temperature 1)."""
    torch.manual_seed(0)
    return theirs.sample_tokens(batch, num_iter=steps, cfg=cfg, cfg_schedule="linear", labels=labels, temperature=1.0)


def _gb(value):
    return "-" if value is None else f"{value:.2f}"


def cuda_report(path, result):
    lines = [f"# Engine benchmark on CUDA: {result['model']}", "", f"Command: `{result['command']}`  ",
             f"Machine: {result['device']}; torch {result['torch']}; git {result['git_commit']}; {result['date']}", "",
             f"Random weights (every parameter perturbed), cfg {result['cfg']} linear, 100 diffusion steps; seconds "
             "per image of one whole sample, synchronised, each system once after a warm-up at 2 AR steps. "
             "`graphs capturing`: engine=graphs' first run at these shapes, which captures its graphs (all settings "
             "first); `graphs`: replaying them. peak GB: allocated above the start of the run (a replay's graph "
             "pool is not counted); held GB: what the allocator holds after it. same as fast: graphs' tokens "
             "(replaying / capturing) bit for bit against engine=fast's.", "",
             "| AR steps | batch | system | dtype | s/image | vs official, same dtype | peak GB | held GB "
             "| finite tokens | same as fast |", "|---|---|---|---|---|---|---|---|---|---|"]
    official = {(r["ar_steps"], r["batch"], r["dtype"]): r["seconds_per_image"] for r in result["rows"]
                if r["system"] == "official"}
    for r in result["rows"]:
        ref = official.get((r["ar_steps"], r["batch"], r["dtype"]))
        ratio = f"{r['seconds_per_image'] / ref:.3f}" if ref else "-"
        same = "" if r["same_tokens_as_fast"] is None else " / ".join(
            "yes" if v else "NO" for v in (r["same_tokens_as_fast"], r["same_capturing_tokens_as_fast"]))
        lines.append(f"| {r['ar_steps']} | {r['batch']} | {r['system']} | {r['dtype']} | {r['seconds_per_image']:.4f} "
                     f"| {ratio} | {_gb(r['peak_allocated_GB'])} | {_gb(r['reserved_GB'])} | {r['finite_fraction']:.3f} "
                     f"| {same} |")
    lines += ["", result["official_note"], ""]
    path.write_text("\n".join(lines))


def head_breakdown(systems, rows=(8, 32), repeats=20):
    """Where one per-step head call of the fast systems goes, at `rows` rows (guided: 8 at 64 AR steps, 32
    at 16 on a 256-token image): the whole call (FastHeadLoop.net_out) against its linear layers alone,
    called in the same order on inputs of their shapes. Their rate as weight traffic (the bytes one call
    reads / time) is the ceiling of the head's share of the streaming bandwidth: what the GEMM kernels reach
    at these few rows; the rest of the call (layer norms, modulation, residuals, Python) only lowers it.
    The best of 5 rounds of `repeats` calls each."""
    def best(fn):
        fn()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            times.append((time.perf_counter() - start) / repeats)
        return min(times)
    out = {}
    for name, (model, _) in systems.items():
        if not name.startswith("fast"):
            continue
        loop = FastHeadLoop(model)
        dtype = loop.input_proj.weight.dtype
        width = model.diffloss.net.input_proj.out_features
        linears = [loop.input_proj] + [layer for block in loop.blocks for layer in block[2:]] + [loop.final_linear]
        g = torch.Generator().manual_seed(0)
        per_rows = {}
        with torch.no_grad():
            for n in rows:
                x = torch.randn(n // 2, model.token_dim, generator=g)
                inputs = [torch.randn(n // 2 if layer is loop.input_proj else n, layer.weight.shape[1], generator=g).to(dtype)
                          for layer in linears]
                mods = [[part[0] for part in m] for m in loop.modulations(torch.randn(1, n, width, generator=g).to(dtype))]
                gemm_s = best(lambda: [layer(i) for layer, i in zip(linears, inputs)])
                call_s = best(lambda: loop.net_out(x, mods, guided=True))
                read = head_weights(model, "bf16" if dtype == torch.bfloat16 else "fp32")[1]
                per_rows[n] = {"call_ms": call_s * 1e3, "gemm_ms": gemm_s * 1e3, "gemm_share": gemm_s / call_s,
                               "call_GBs": read / call_s / 1e9, "gemm_GBs": read / gemm_s / 1e9}
        out[name] = {"dtype": str(dtype).replace("torch.", ""), "layers": len(linears), "rows": per_rows}
    return out


def official_dtypes(theirs):
    """The official code's settings benched here: fp32, and bf16 autocast on a CPU with bf16 instructions."""
    return [] if theirs is None else ["fp32"] + (["bf16-autocast"] if cpu_has_bf16() else [])


def official_step(theirs, tokens, labels, z, dtype):
    batch = labels.shape[0]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != "fp32"):
        start = time.perf_counter()
        mask = torch.ones(2 * batch, theirs.seq_len)
        cls = torch.cat([theirs.class_emb(labels), theirs.fake_latent.repeat(batch, 1)])
        theirs.forward_mae_decoder(theirs.forward_mae_encoder(tokens, mask, cls), mask)
        middle = time.perf_counter()
        torch.manual_seed(0)
        theirs.diffloss.sample(torch.cat([z, z]), 1.0, 3.0)
    return middle - start, time.perf_counter() - middle


def our_step(model, engine, tokens, known, labels, z, noise):
    dtype = model.fake_latent.dtype
    batch = labels.shape[0]
    start = time.perf_counter()
    emb = torch.cat([model.embed_condition(labels), model.unconditional_embedding(batch)])
    model.condition(tokens.to(dtype), known, emb)
    middle = time.perf_counter()
    z = z.to(dtype)
    head_loop(model, engine)(PlainHead(model), z, sampling_diffusion(100), noise, uncond=z, cfg=3.0)
    return middle - start, time.perf_counter() - middle


def targets(rows, steps=64):
    """Issue 14's done-when figures at `steps` AR steps, batch 1: [(what, value, target, met)]."""
    by = {(r["system"], r["dtype"]): r for r in rows if r["ar_steps"] == steps and r["batch"] == 1}
    out = []
    official = by.get(("official", "fp32"))
    for (system, dtype), goal in ((("fast", "fp32"), 0.75), (("fast", "bf16"), 0.25)):
        if official and (system, dtype) in by:
            ratio = by[(system, dtype)]["seconds"] / official["seconds"]
            out.append((f"{system} {dtype} / official fp32, {steps} AR steps", ratio, f"<= {goal}", ratio <= goal))
    for dtype in ("fp32", "bf16"):
        if ("fast", dtype) in by:
            r = by[("fast", dtype)]
            out.append((f"fast {dtype}: head weight traffic / streaming bandwidth", r["head_bandwidth_fraction"],
                        ">= 0.70", r["head_bandwidth_fraction"] >= 0.7))
            out.append((f"fast {dtype}: transformer GFLOP/s / {dtype} matmul peak", r["transformer_peak_fraction"],
                        ">= 0.70", r["transformer_peak_fraction"] >= 0.7))
    return out


def report(path, result):
    p, lines = result["peaks"], []
    lines += [f"# Engine benchmark: {result['model']}, {result['threads']} threads", "",
              f"Command: `{result['command']}`  ", f"Machine: {result['device']}; torch {result['torch']}; "
              f"git {result['git_commit']}; {result['date']}", "",
              f"Measured in this run: fp32 matmul {p['matmul_fp32_GFLOPs']:.1f} GFLOP/s, bf16 matmul "
              f"{p['matmul_bf16_GFLOPs']:.1f} GFLOP/s, streaming read {p['stream_GBs']:.1f} GB/s.", "",
              "| AR steps | batch | system | dtype | s/image | vs official fp32 | transformer s | head s "
              "(modulations) | rest s | head calls | head GB/s (of stream) | head GFLOP/s | transformer GFLOP/s "
              "(of its dtype's peak) |", "|" + "---|" * 13]
    official = {(r["ar_steps"], r["batch"]): r["seconds_per_image"] for r in result["rows"]
                if r["system"] == "official" and r["dtype"] == "fp32"}
    for r in result["rows"]:
        ref = official.get((r["ar_steps"], r["batch"]))
        ratio = f"{r['seconds_per_image'] / ref:.3f}" if ref else "-"
        lines.append(f"| {r['ar_steps']} | {r['batch']} | {r['system']} | {r['dtype']} | {r['seconds_per_image']:.2f} "
                     f"| {ratio} | {r['transformer_s']:.2f} | {r['head_s']:.2f}"
                     + (f" ({r['modulations_s']:.2f})" if r.get("modulation_calls") else "") +
                     f" | {r['rest_s']:.2f} | {r['head_calls']} "
                     f"| {r['head_GBs']:.1f} ({r['head_bandwidth_fraction']:.0%}) | {r['head_GFLOPs']:.1f} "
                     f"| {r['transformer_GFLOPs']:.1f} ({r['transformer_peak_fraction']:.0%}) |")
    checks = targets(result["rows"])
    if checks:
        lines += ["", "Targets (issue 14, batch 1, this run):", "", "| what | measured | target | met |", "|---|---|---|---|"]
        lines += [f"| {what} | {value:.3f} | {goal} | {'yes' if met else 'no'} |" for what, value, goal, met in checks]
    lines += ["", "head s: the head network's calls, and for the fast engine its adaLN modulation GEMMs (once per "
              "chain, in brackets). head GB/s: the weights one network call reads x calls / the calls' time (the fast "
              "engine's calls read all but the adaLN weights). rest: diffusion arithmetic, gathers, Python."]
    if result.get("throughput"):
        t = result["throughput"]
        base = t.get("official fp32")
        lines += ["", f"Batch {next(iter(t.values()))['batch']}, one AR step's components (the first step of 64: "
                  "the transformer on the buffer, one 100-step head chain for its tokens):", "",
                  "| system | transformer s | head chain s | total vs official fp32 |", "|---|---|---|---|"]
        for system, r in t.items():
            total = r["transformer_s"] + r["head_chain_s"]
            ratio = f"{total / (base['transformer_s'] + base['head_chain_s']):.3f}" if base else "-"
            lines.append(f"| {system} | {r['transformer_s']:.2f} | {r['head_chain_s']:.2f} | {ratio} |")
    if result.get("transformer_breakdown"):
        lines += ["", "Where the fast engine's transformer time goes (torch.profiler, self CPU time; batch 1 under "
                  "guidance, one encoder + decoder pass at each of "
                  f"{next(iter(result['transformer_breakdown'].values()))['known_counts']} known tokens):", "",
                  "| system | profiled s | linear GEMMs | their GFLOP/s (of the dtype's peak) | attention | rest |",
                  "|---|---|---|---|---|---|"]
        for system, b in result["transformer_breakdown"].items():
            peak = p["matmul_bf16_GFLOPs" if b["dtype"] == "bfloat16" else "matmul_fp32_GFLOPs"]
            lines.append(f"| {system} | {b['profiled_s']:.3f} | {b['gemm_share']:.0%} | {b['gemm_GFLOPs']:.0f} "
                         f"({b['gemm_GFLOPs'] / peak:.0%}) | {b['attention_share']:.0%} | {b['other_share']:.0%} |")
        lines += ["", "The transformer's share of the matmul peak can reach at most the GEMMs' own share of it, and "
                  "less by the time attention and the rest take."]
    if result.get("head_breakdown"):
        lines += ["", "Where one per-step head call of the fast engine goes (the best of 5 x 20 calls; guided rows: 8 "
                  "at 64 AR steps, 32 at 16): the whole call against its linear layers alone, each as weight "
                  "traffic (the bytes a call reads / time) and its share of the streaming bandwidth:", "",
                  "| system | rows | call ms | its GEMMs ms (share) | call GB/s (of stream) | GEMMs alone GB/s (of stream) |",
                  "|---|---|---|---|---|---|"]
        for system, b in result["head_breakdown"].items():
            for n, r in b["rows"].items():
                lines.append(f"| {system} | {n} | {r['call_ms']:.3f} | {r['gemm_ms']:.3f} ({r['gemm_share']:.0%}) | "
                             f"{r['call_GBs']:.1f} ({r['call_GBs'] / p['stream_GBs']:.0%}) | {r['gemm_GBs']:.1f} "
                             f"({r['gemm_GBs'] / p['stream_GBs']:.0%}) |")
        lines += ["", "The head's share of the streaming bandwidth can reach at most what its GEMM kernels reach at "
                  "these rows, and less by the rest of the call."]
    lines += ["", result["bf16"], ""]
    path.write_text("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", help="path to a LTH14/mar checkout (without it: ours only)")
    p.add_argument("--model", default="mar_base", choices=sorted(HEAD))
    p.add_argument("--steps", type=int, nargs="+", default=[16, 64], help="AR steps of the batch-1 runs")
    p.add_argument("--throughput-batch", type=int, default=32, help="batch of the one-AR-step timing (0: skip)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--out", default="outputs/engine", help="folder for bench.md and bench.json "
                   "(results/engine holds the committed ones)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: the GPU benchmark (cuda_bench; "
                   "bench_cuda.md) instead of the CPU one")
    p.add_argument("--batches", type=int, nargs="*", default=[256], help="with --device cuda: the large batches "
                   "(fp16 autocast, the official evaluation's protocol)")
    args = p.parse_args()
    if any(s < 1 or s > 256 for s in args.steps) or args.throughput_batch < 0 or args.threads < 1 or any(
            b < 1 for b in args.batches):
        sys.exit("error: --steps must be in 1..256, --throughput-batch >= 0, --threads >= 1, --batches >= 1")
    if args.device == "cuda":
        return main_cuda(args)
    official_mar = import_official(os.path.abspath(args.official)) if args.official else None
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    peaks = machine_peaks()
    print("peaks:", {k: round(v, 1) for k, v in peaks.items()}, flush=True)

    model = build_mar(args.model).eval()
    perturb(model, torch.Generator().manual_seed(0))
    theirs = None
    if official_mar is not None:
        depth, width = HEAD[args.model]
        theirs = getattr(official_mar, args.model)(buffer_size=64, diffloss_d=depth, diffloss_w=width,
                                                    num_sampling_steps="100").eval()
        theirs.load_state_dict(model.state_dict(), strict=True)
    # Ours: each system its own copy, as `prepare` repacks weights in place.
    systems = {"reference": (model, "reference"), "fast": (copy.deepcopy(model), "fast")}
    if cpu_has_bf16():
        systems["fast bf16"] = (copy.deepcopy(model).to(torch.bfloat16), "fast")
    for m, engine in systems.values():
        prepare(m, engine)
    with torch.device("meta"):
        meta = build_mar(args.model)
    rows = []
    for m, engine in systems.values():  # warm-up
        sample(m, mar(2, 2), torch.tensor([0]), [image_generator(0, 0)], cfg=args.cfg, head_loop=head_loop(m, engine))
    for steps in args.steps:
        counted = count_flops(meta, mar(steps, 100), cfg=args.cfg, include_vae=False)
        flops, head_flops = counted["encdec_T"] * 1e12, counted["head_T"] * 1e12
        runs = [("official", dtype, lambda a=dtype: run_official(theirs, steps, 1, args.cfg,
                                                                  None if a == "fp32" else torch.bfloat16))
                for dtype in official_dtypes(theirs)]
        runs += [(name.split()[0], "bf16" if "bf16" in name else "fp32",
                  lambda m=m, e=e: run_ours(m, e, steps, 1, args.cfg)) for name, (m, e) in systems.items()]
        for system, dtype, fn in runs:
            total, timer = fn()
            rows.append(row(system, dtype, steps, 1, total, timer, head_weights(model, dtype), flops, head_flops, peaks))
            r = rows[-1]
            print(f"{steps:3d} AR steps  {system:<9} {dtype:<13} {total:8.2f} s  transformer {r['transformer_s']:.2f}  "
                  f"head {r['head_s']:.2f} ({r['head_GBs']:.1f} GB/s)  rest {r['rest_s']:.2f}", flush=True)
    result = {"model": args.model, "threads": args.threads, "command": "python " + " ".join(sys.argv),
              "device": device_name("cpu"), "machine": platform.machine(), "torch": torch.__version__,
              "git_commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "peaks": peaks, "rows": rows}
    if args.throughput_batch:
        result["throughput"] = throughput(systems, theirs, args.throughput_batch, args.cfg)
        print("throughput:", result["throughput"], flush=True)
    result["transformer_breakdown"] = transformer_breakdown(systems)
    print("transformer breakdown:", result["transformer_breakdown"], flush=True)
    result["head_breakdown"] = head_breakdown(systems)
    print("head breakdown:", result["head_breakdown"], flush=True)
    if cpu_has_bf16():
        result["bf16"] = ("bf16: this CPU has bf16 instructions. `fast bf16` is the model cast with "
                          "model.to(torch.bfloat16) (tokens, noise and diffusion arithmetic stay fp32); `official "
                          "bf16-autocast` is the official code, fp32 weights, under CPU bf16 autocast.")
    else:
        result["bf16"] = (f"bf16: not measured. This CPU has no bf16 instructions (avx512_bf16/AMX): its bf16 matmul "
                          f"runs at {peaks['matmul_bf16_GFLOPs']:.1f} GFLOP/s against {peaks['matmul_fp32_GFLOPs']:.1f} "
                          "fp32; run this on such a CPU.")
    print(result["bf16"], flush=True)
    (out / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    report(out / "bench.md", result)
    for what, value, goal, met in targets(rows):
        print(f"{what}: {value:.3f} (target {goal}: {'met' if met else 'not met'})", flush=True)
    print(f"wrote {out / 'bench.md'}", flush=True)


def main_cuda(args):
    """--device cuda: cuda_bench on MAR with random weights -> <out>/bench_cuda.md and bench_cuda.json."""
    if not torch.cuda.is_available():
        sys.exit("error: --device cuda but CUDA is not available here")
    official_mar, note = None, "Official code: not run (no --official)."
    if args.official:
        try:
            official_mar = import_official(os.path.abspath(args.official), cuda=True)
            note = f"Official code: LTH14/mar imported from {args.official}, run as released on CUDA."
        except SystemExit as e:  # e.g. timm missing on a bare GPU image: ours are still measured
            note = f"Official code: not run ({e})."
    print(note, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_mar(args.model).eval()
    perturb(model, torch.Generator().manual_seed(0))
    theirs = None
    if official_mar is not None:
        depth, width = HEAD[args.model]
        try:  # the official code's own needs (scipy, tqdm, its CUDA calls) on this image, tried once
            theirs = getattr(official_mar, args.model)(buffer_size=64, diffloss_d=depth, diffloss_w=width,
                                                        num_sampling_steps="100").eval()
            theirs.load_state_dict(model.state_dict(), strict=True)
            theirs.cuda()
            with torch.no_grad():
                for fp16 in (False, True):  # both dtypes the bench runs it in
                    with torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
                        official_tokens(theirs, 1, 2, args.cfg, torch.tensor([0], device="cuda"))
        except Exception as e:  # noqa: BLE001 -- any failure of theirs: ours are still measured
            theirs, note = None, f"Official code: not run ({type(e).__name__}: {e})."
            print(note, flush=True)
    model.cuda()
    result = {"model": args.model, "cfg": args.cfg, "command": "python " + " ".join(sys.argv),
              "device": device_name(model.fake_latent.device), "torch": torch.__version__, "git_commit": git_commit(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "official_note": note, "rows": []}

    def write(rows):
        result["rows"] = rows
        (out / "bench_cuda.json").write_text(json.dumps(result, indent=1) + "\n")
        cuda_report(out / "bench_cuda.md", result)
    rows = cuda_bench(model, theirs, args.steps, args.batches, args.cfg, on_row=write)
    print(f"wrote {out / 'bench_cuda.md'}", flush=True)
    if any(r["same_tokens_as_fast"] is False or r["same_capturing_tokens_as_fast"] is False for r in rows):
        sys.exit("error: engine=graphs gave other tokens than engine=fast (bench_cuda.md)")


if __name__ == "__main__":
    main()
