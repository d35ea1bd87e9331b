"""The fast engine (gtr/engine.py) computes what the reference loop computes, to float rounding."""
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from baselines.lazymar import lazymar
from gtr.checkpoints import load_mar
from gtr.config import ConfigError, check_values, compose
from gtr.engine import FastHeadLoop, cpu_has_bf16, head_loop, prepare
from gtr.method import PlainHead, mar
from gtr.models.diffusion import sample_head, sampling_diffusion
from gtr.models.mar import Mlp, build_mar
from gtr.load import decoder
from gtr.runs import image_settings, precision, settings_hash
from gtr.sampler import image_generator, sample
from helpers import assert_close_to_scale, assert_same_images, scale_error

TINY = Path(__file__).resolve().parents[1] / "results" / "tiny_mar" / "tiny_mar_ema.pth"


def load_bench():
    """scripts/bench_engine.py as a module (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location("bench_engine", Path(__file__).resolve().parents[1] / "scripts" / "bench_engine.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def random_mar(seed=0, **overrides):
    """A small MAR whose every parameter is random (adaLN and output layers are zero at init)."""
    g = torch.Generator().manual_seed(seed)
    model = build_mar("mar_test", **overrides).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.mark.parametrize("guided, cfg, temperature, steps, clip", [
    (True, 3.0, 1.0, 20, None), (False, 1.0, 0.9, 20, None), (True, "per-row", 1.0, 20, 950),
    (True, 2.0, 1.0, 1, None)])
def test_fast_chain_equals_reference_chain(guided, cfg, temperature, steps, clip):
    model = random_mar(diffloss_d=3, diffloss_w=64)
    g = torch.Generator().manual_seed(1)
    n, width = 6, model.config.width
    cond, uncond = torch.randn(n, width, generator=g), torch.randn(n, width, generator=g)
    process = sampling_diffusion(steps, clip)
    noise = torch.randn(n, 1 + process.num_steps, model.token_dim, generator=g)
    if cfg == "per-row":
        cfg = torch.linspace(1.5, 4.0, n)
    kwargs = dict(uncond=uncond if guided else None, cfg=cfg, temperature=temperature)
    with torch.no_grad():
        reference = sample_head(PlainHead(model), cond, process, noise, **kwargs)
        fast = FastHeadLoop(model)(PlainHead(model), cond, process, noise, **kwargs)
    assert_close_to_scale(fast, reference, rtol=1e-5)


def test_a_fast_chain_does_nothing_a_cuda_graph_cannot_capture():
    """engine=graphs captures engine=fast's chain as a CUDA graph, which cannot hold a host sync (a value
    read back: item, nonzero) nor a tensor made from Python data on the way (its host-to-device copy).
    Checked here on the CPU by recording the chain's aten calls, once its tables are built, guided with a
    scalar and with a per-row scale: the old indexing of the time table by a Python list is one such call.
    (A .to("cuda") of a CPU tensor would not show on the CPU: the CUDA tests capture for real.)"""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Calls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    model = random_mar(diffloss_d=2, diffloss_w=48)
    loop, g = FastHeadLoop(model), torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(4, model.config.width, generator=g), torch.randn(4, model.config.width, generator=g)
    noise = torch.randn(4, 11, model.token_dim, generator=g)
    for cfg in (2.5, torch.linspace(1.5, 3.0, 4)):
        loop(PlainHead(model), cond, sampling_diffusion(10), noise, uncond=uncond, cfg=cfg)  # builds the tables
        with torch.no_grad(), Calls() as calls:
            loop(PlainHead(model), cond, sampling_diffusion(10), noise, uncond=uncond, cfg=cfg)
        assert "addmm" in calls.names or "_linear_pointwise" in calls.names  # the recording saw the chain
        assert not calls.names & {"_local_scalar_dense", "item", "nonzero", "lift_fresh", "index"}


def test_fast_sampler_equals_reference_sampler():
    model = random_mar(diffloss_d=2, diffloss_w=48)
    labels, gens = torch.tensor([1, 7, 3]), lambda: [image_generator(5, i) for i in range(3)]
    reference = sample(model, mar(4, 10), labels, gens(), cfg=2.5)
    loop, calls = head_loop(model, "fast"), []
    net_out = loop.net_out
    loop.net_out = lambda *a: calls.append(1) or net_out(*a)
    fast = sample(model, mar(4, 10), labels, gens(), cfg=2.5, head_loop=loop)
    assert len(calls) == 4 * 10  # the engine's own kernels ran every head call (no fallback)
    assert_close_to_scale(fast, reference, rtol=1e-4)


def test_stateful_heads_keep_their_loop_on_the_fast_kernels():
    """LazyMAR's head cache is a stateful Head: on engine=fast it keeps its own diffusion loop (full and
    lazy steps) and runs the network's parts on the fast loop's packed kernels: the same tokens to rounding."""
    model = random_mar()
    labels = torch.tensor([2, 5])
    method = lambda: lazymar(8, 20)  # noqa: E731 (a fresh cache per run)
    reference = sample(model, method(), labels, [image_generator(0, i) for i in range(2)], cfg=3.0)
    fast = sample(model, method(), labels, [image_generator(0, i) for i in range(2)], cfg=3.0,
                  head_loop=head_loop(model, "fast"))
    if FastHeadLoop(model).input_proj.packed is not None:  # no oneDNN: the same ops, bitwise
        assert not torch.equal(fast, reference)
    assert_close_to_scale(fast, reference, rtol=1e-4)


def test_tiny_model_images_are_the_same_with_either_engine():
    """What users see: the trained tiny model's uint8 images agree between engines (to rounding)."""
    model = load_mar(build_mar("mar_tiny"), str(TINY)).eval()
    method, labels = mar(8, 50, clip_timesteps=950), torch.arange(6)
    images = {}
    for engine in ("reference", "fast"):
        tokens = sample(model, method, labels, [image_generator(3, i) for i in range(6)], cfg=2.0,
                        head_loop=head_loop(model, engine))
        images[engine] = decoder({"decoder": "pixels"}, model)(tokens).numpy()
    assert_same_images(images["fast"], images["reference"])


def test_engine_is_a_checked_run_setting():
    base = compose(["model=tiny", "method=gtr"])[0]
    fast = compose(["model=tiny", "method=gtr", "engine=fast"])[0]
    reference = compose(["model=tiny", "method=gtr", "engine=reference"])[0]
    assert settings_hash(fast) != settings_hash(base)
    assert image_settings(fast)["engine"] == "fast"
    # the reference engine keeps the run identity that runs had before engines were a setting
    assert "engine" not in image_settings(reference) and settings_hash(reference) == settings_hash(base)
    bad = compose(["model=tiny", "method=gtr", "engine=turbo"])[0]
    with pytest.raises(ConfigError, match="engine must be one of reference, fast"):
        check_values(bad)
    with pytest.raises(ValueError, match="unknown engine"):
        head_loop(random_mar(), "turbo")


def test_engine_graphs_needs_a_gpu_and_runs_as_fast_elsewhere():
    """engine=graphs replays CUDA graphs: with device=cpu (or no GPU) it is refused in one line before any
    work; handed CPU tensors, its loop is engine=fast's, bit for bit, and captures nothing. Its graphs
    themselves are checked on a GPU (tests/test_cuda.py)."""
    for device in ["cpu"] + ([] if torch.cuda.is_available() else ["cuda", "auto"]):
        with pytest.raises(ConfigError, match="engine=graphs replays CUDA graphs and needs a CUDA GPU"):
            check_values(compose(["model=tiny", "method=gtr", "engine=graphs", f"device={device}"])[0])
    assert image_settings(compose(["model=tiny", "method=gtr", "engine=graphs"])[0])["engine"] == "graphs"
    model = random_mar(diffloss_d=2, diffloss_w=48)
    labels, gens = torch.tensor([1, 7, 3]), lambda: [image_generator(5, i) for i in range(3)]
    graphed = prepare(model, "graphs")
    fast = sample(model, mar(4, 10), labels, gens(), cfg=2.5, head_loop=head_loop(model, "fast"))
    assert torch.equal(sample(model, mar(4, 10), labels, gens(), cfg=2.5, head_loop=graphed), fast)
    assert graphed.graphs == {}


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_a_cast_model_samples_in_its_dtype_with_fp32_tokens(engine):
    """precision=cast: model.to(bf16) samples through the same sampler; tokens, noise and the diffusion
    arithmetic stay fp32, and the result follows the fp32 model's up to bf16 rounding."""
    model = load_mar(build_mar("mar_tiny"), str(TINY)).eval()
    method, labels = mar(4, 20, clip_timesteps=950), torch.arange(30) % 10
    fp32 = sample(model, method, labels, [image_generator(0, i) for i in range(30)], cfg=2.0,
                  head_loop=prepare(model, engine))
    model = model.to(torch.bfloat16)
    bf16 = sample(model, method, labels, [image_generator(0, i) for i in range(30)], cfg=2.0,
                  head_loop=prepare(model, engine))
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    # bf16 keeps 8 bits of mantissa; sampling amplifies differences, so compare the images' overall
    # agreement: nearly every pixel within 4 grey levels of the fp32 image's (measured over these 30 images
    # on an Intel Xeon with AMX: 99.1% with the reference engine, 99.0% with fast; mean difference 0.44;
    # single images down to 94%, so a few images are not enough).
    decode = decoder({"decoder": "pixels"}, model)
    a, b = decode(bf16).numpy().astype(int), decode(fp32).numpy().astype(int)
    assert (abs(a - b) <= 4).mean() >= 0.98, f"only {(abs(a - b) <= 4).mean():.1%} of pixels within 4 levels"
    assert not torch.equal(bf16, fp32)  # the cast really ran in bf16


def test_precision_is_a_checked_run_setting():
    fp32_cast = compose(["model=tiny", "method=gtr", "precision=cast"])[0]
    bf16_cast = compose(["model=tiny", "method=gtr", "dtype=bf16", "precision=cast"])[0]
    bf16_amp = compose(["model=tiny", "method=gtr", "dtype=bf16"])[0]
    base = compose(["model=tiny", "method=gtr"])[0]
    assert settings_hash(fp32_cast) == settings_hash(base)  # fp32 is fp32 either way
    assert image_settings(bf16_cast)["precision"] == "cast" and settings_hash(bf16_cast) != settings_hash(bf16_amp)
    assert precision(bf16_cast) == (torch.bfloat16, None) and precision(bf16_amp) == (None, torch.bfloat16)
    with pytest.raises(ConfigError, match="precision must be one of autocast, cast"):
        check_values(compose(["model=tiny", "method=gtr", "precision=half"])[0])


def test_prepare_repacks_only_a_bf16_transformer():
    """engine=fast's prepare: an fp32 model is left as it is; a bf16 one (on a CPU with bf16 instructions)
    gets its widening transformer layers repacked, its head untouched, and conditions as before."""
    tokens, known = torch.randn(2, 16, 16), torch.tensor([[0, 3, 5], [1, 2, 9]])
    for dtype in (torch.float32, torch.bfloat16):
        model = random_mar(width=64, num_heads=4).to(dtype)
        emb = model.embed_condition(torch.tensor([1, -1]))
        with torch.no_grad():
            before = model.condition(tokens.to(dtype), known, emb)
            assert prepare(model, "reference") is sample_head
            assert isinstance(prepare(model, "fast"), FastHeadLoop)
            after = model.condition(tokens.to(dtype), known, emb)
        repacked = {name for name, m in model.named_modules() if "forward" in m.__dict__}
        if dtype == torch.float32 or not cpu_has_bf16():
            assert not repacked and torch.equal(after, before)
        else:
            # qkv repacked; each MLP runs fc1 + GELU as one packed kernel (its fc1 is not packed twice)
            assert repacked == {name for name, m in model.named_modules() if not name.startswith("diffloss") and (
                isinstance(m, Mlp) or isinstance(m, torch.nn.Linear) and m.out_features > m.in_features
                and not name.endswith("mlp.fc1"))}
            assert any(name.endswith("attn.qkv") for name in repacked) and any(name.endswith(".mlp") for name in repacked)
            assert_close_to_scale(after.float(), before.float(), rtol=3e-2)
            x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0)).to(dtype)
            mlp = model.encoder_blocks[0].mlp
            with torch.no_grad():  # the fused GELU against fc1, GELU, fc2 in bf16: at bf16 rounding
                assert_close_to_scale(mlp(x).float(), mlp.fc2(F.gelu(mlp.fc1(x))).float(), rtol=2e-2)
        prepare(model, "reference")  # undone: the model is as it was
        assert not any("forward" in m.__dict__ for m in model.modules())
        with torch.no_grad():
            assert torch.equal(model.condition(tokens.to(dtype), known, emb), before)


def test_bench_engine_reads_its_targets_from_the_rows():
    """scripts/bench_engine.py: the head bytes a fast call reads leave out the adaLN weights it computes once
    per chain, and the issue's targets are read from the 64-step rows of the same run."""
    bench = load_bench()
    model = random_mar(diffloss_d=2, diffloss_w=48)
    total, per_step = bench.head_weights(model, "fp32")
    assert total == 4 * sum(p.numel() for p in model.diffloss.net.parameters())
    once_per_chain = 4 * sum(p.numel() for n, p in model.diffloss.net.named_parameters()
                             if "adaLN" in n or n.startswith(("time_embed.", "cond_embed.")))
    assert per_step == total - once_per_chain and bench.head_weights(model, "bf16") == (total // 2, per_step // 2)

    def r(system, dtype, seconds, bandwidth=0.8, peak=0.8, steps=64):
        return {"system": system, "dtype": dtype, "ar_steps": steps, "batch": 1, "seconds": seconds,
                "head_bandwidth_fraction": bandwidth, "transformer_peak_fraction": peak}
    rows = [r("official", "fp32", 100.0), r("official", "fp32", 10.0, steps=16), r("fast", "fp32", 74.0),
            r("fast", "bf16", 26.0, bandwidth=0.69, peak=0.4)]
    met = {what: (round(value, 3), ok) for what, value, _, ok in bench.targets(rows)}
    assert met["fast fp32 / official fp32, 64 AR steps"] == (0.74, True)
    assert met["fast bf16 / official fp32, 64 AR steps"] == (0.26, False)
    assert met["fast bf16: head weight traffic / streaming bandwidth"] == (0.69, False)
    assert met["fast fp32: transformer GFLOP/s / fp32 matmul peak"] == (0.8, True)
    assert bench.targets([r("fast", "fp32", 1.0)])[0][0].startswith("fast fp32: head")  # no official: no ratio


def test_bench_engine_cuda_mode_runs_every_system_and_keeps_each_row(tmp_path):
    """bench_engine.py --device cuda's benchmark, here on the CPU (where engine=graphs is fast): graphs'
    captures for every setting first, then each setting in its order (batch 1 at the first steps fp32 and
    fp16, the large batches, then the other steps) with every system, graphs' tokens (replayed and
    captured) compared with fast's, every row handed on as it lands (a cut run keeps it), the report."""
    bench = load_bench()
    seen = []
    rows = bench.cuda_bench(random_mar(diffloss_d=2, diffloss_w=48), None, [2, 3], [2], 2.5,
                            on_row=lambda rows: seen.append(len(rows)))
    settings = [(1, 2, "fp32"), (1, 2, "fp16-autocast"), (2, 2, "fp16-autocast"), (1, 3, "fp16-autocast")]
    assert [(r["system"], r["batch"], r["ar_steps"], r["dtype"]) for r in rows[:4]] == [("graphs capturing", *s) for s in settings]
    assert [(r["batch"], r["ar_steps"], r["dtype"]) for r in rows[4::3]] == settings
    assert [r["system"] for r in rows[4:7]] == ["reference", "fast", "graphs"]
    graphs = [r for r in rows if r["system"] == "graphs"]
    assert len(graphs) == 4 and all(r["same_tokens_as_fast"] and r["same_capturing_tokens_as_fast"] for r in graphs)
    assert seen == list(range(1, len(rows) + 1))
    path = tmp_path / "bench_cuda.md"
    bench.cuda_report(path, {"model": "mar_test", "cfg": 2.5, "command": "c", "device": "cpu", "torch": "t",
                             "git_commit": "g", "date": "d", "official_note": "Official code: not run.", "rows": rows})
    text = path.read_text()
    assert "| 2 | 2 | graphs | fp16-autocast |" in text and text.count("| yes / yes |") == 4


def test_bench_transformer_breakdown_counts_the_linear_layers_flops():
    """The breakdown's GEMM GFLOP/s rests on the FLOPs of the rows each transformer linear layer sees: for
    one pass with k known tokens under guidance, the encoder sees 2 x (buffer + k) rows, the decoder 2 x
    (buffer + seq_len)."""
    bench = load_bench()
    model = random_mar(diffloss_d=2, diffloss_w=48).to(torch.bfloat16)  # a fused MLP's fc1 counts too
    prepare(model, "fast")
    got = bench.transformer_breakdown({"fast": (model, "fast"), "reference": (model, "reference")}, known_counts=(0, 3))
    assert set(got) == {"fast"}
    b = got["fast"]
    buffer = model.buffer_size
    per_row = sum(m.in_features * m.out_features for m in model.encoder_blocks.modules() if isinstance(m, torch.nn.Linear))
    per_row_dec = sum(m.in_features * m.out_features for m in model.decoder_blocks.modules() if isinstance(m, torch.nn.Linear))
    flops = sum(2 * 2 * ((buffer + k) * per_row + (buffer + model.seq_len) * per_row_dec) for k in (0, 3))
    gemm_s = b["gemm_share"] * b["profiled_s"]
    assert b["gemm_GFLOPs"] == pytest.approx(flops / gemm_s / 1e9, rel=1e-6)
    assert b["gemm_share"] + b["attention_share"] + b["other_share"] == pytest.approx(1.0)
    assert min(b["gemm_share"], b["attention_share"], b["other_share"]) > 0


def test_bench_head_breakdown_times_a_call_and_its_linear_layers():
    """The head breakdown's GEMM-only rate reads the bytes of every linear layer a per-step call runs (not
    the adaLN ones, computed once per chain), in each fast system's dtype, at each row count."""
    bench = load_bench()
    model = random_mar(diffloss_d=2, diffloss_w=48)
    bf16 = random_mar(diffloss_d=2, diffloss_w=48).to(torch.bfloat16)
    got = bench.head_breakdown({"fast": (model, "fast"), "fast bf16": (bf16, "fast"), "reference": (model, "reference")},
                               rows=(4, 8), repeats=2)
    assert set(got) == {"fast", "fast bf16"} and got["fast bf16"]["dtype"] == "bfloat16"
    assert got["fast"]["layers"] == 1 + 2 * 2 + 1  # input projection, each block's fc1 and fc2, the output layer
    read = bench.head_weights(model, "fp32")[1]
    loop = FastHeadLoop(model)  # the layers a per-step call runs hold all but the norms' bytes the rate counts
    linears = [loop.input_proj, *(layer for block in loop.blocks for layer in block[2:]), loop.final_linear]
    norms = sum(p.numel() for b in model.diffloss.net.res_blocks for p in b.in_ln.parameters())
    assert 4 * (sum(layer.weight.numel() + layer.bias.numel() for layer in linears) + norms) == read
    for name, size in (("fast", 1), ("fast bf16", 2)):
        for n, r in got[name]["rows"].items():
            assert r["gemm_GBs"] * r["gemm_ms"] / 1e3 * 1e9 == pytest.approx(read / size, rel=1e-6)
            assert r["gemm_share"] == pytest.approx(r["gemm_ms"] / r["call_ms"]) and r["call_ms"] > 0


def test_packed_linear_fuses_the_exact_gelu():
    """_Linear(act="gelu") is fc1 + the erf GELU of nn.GELU() (not its tanh approximation), packed or not;
    an unknown activation is refused when the layer is built."""
    from gtr.engine import _Linear
    g = torch.Generator().manual_seed(0)
    w, b, x = torch.randn(96, 32, generator=g), torch.randn(96, generator=g), torch.randn(7, 32, generator=g) * 0.3
    fused = _Linear(w, b, act="gelu")(x)
    assert_close_to_scale(fused, F.gelu(F.linear(x, w, b)), rtol=2e-6)
    assert scale_error(fused, F.gelu(F.linear(x, w, b), approximate="tanh")) > 2e-5  # ~1e-4 here
    with pytest.raises(ValueError, match="unknown activation"):
        _Linear(w, b, act="relu")


def test_lazymar_head_runs_on_the_fast_kernels():
    """A head with a cache of its own (LazyMAR's) gets engine=fast's packed kernels (gtr.method.HeadKernels)
    and keeps its full/lazy schedule: a guided 30-step chain equals the reference modules' to rounding."""
    from baselines.lazymar import LazyHead
    model = random_mar(diffloss_d=6, diffloss_w=48)
    g = torch.Generator().manual_seed(3)
    n, width = 4, model.config.width
    cond, uncond = torch.randn(n, width, generator=g), torch.randn(n, width, generator=g)
    process = sampling_diffusion(30)
    noise = torch.randn(n, 1 + process.num_steps, model.token_dim, generator=g)
    loop, outs, counts = FastHeadLoop(model), {}, {}
    for name, run in (("reference", sample_head), ("fast", loop)):
        counts[name] = {"full": 0, "lazy": 0}
        head = LazyHead(model.diffloss.net, guided=True, counts=counts[name])
        with torch.no_grad():
            outs[name] = run(head, cond, process, noise, uncond=uncond, cfg=2.5)
        assert (head.kernels is loop) == (name == "fast")
    assert counts["fast"] == counts["reference"] and counts["fast"]["lazy"] > counts["fast"]["full"] > 0
    if loop.input_proj.packed is not None:  # the packed kernels really ran (without oneDNN: the same ops)
        assert not torch.equal(outs["fast"], outs["reference"])
    assert_close_to_scale(outs["fast"], outs["reference"], rtol=1e-5)


def test_fast_loop_runs_a_drafts_head_and_fills_the_trace():
    """Speculative methods (CSpD): the fast loop also runs another model's plain head (the draft's) with
    that model's weights, and fills the trace (last Gaussian, summed log std) as the reference does."""
    target, draft = random_mar(diffloss_d=2, diffloss_w=48), random_mar(seed=1, diffloss_d=1, diffloss_w=32)
    g = torch.Generator().manual_seed(2)
    n, width = 5, target.config.width
    cond, uncond = torch.randn(n, width, generator=g), torch.randn(n, width, generator=g)
    process = sampling_diffusion(12)
    noise = torch.randn(n, 1 + process.num_steps, target.token_dim, generator=g)
    loop = FastHeadLoop(target)
    for model in (target, draft):
        traces = {}
        for name, run in (("reference", sample_head), ("fast", loop)):
            traces[name] = {}
            with torch.no_grad():
                traces[name]["x"] = run(PlainHead(model), cond, process, noise, uncond=uncond, cfg=2.0,
                                        temperature=0.9, trace=traces[name])
        assert set(traces["fast"]) == {"x", "mean", "std", "log_std"}
        for key in traces["fast"]:
            assert_close_to_scale(traces["fast"][key], traces["reference"][key], rtol=1e-5)
    assert list(loop.others.values())[0][0] is draft  # the draft got its own fast loop
