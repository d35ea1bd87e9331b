"""The engine: how the diffusion head's chains are computed. It changes speed, and floats at rounding level.

    reference   gtr.models.diffusion.sample_head: the head called as the official code calls it, once per
                diffusion step on (x, t, z); bitwise equal to LTH14/mar (scripts/verify_official.py).
    fast        FastHeadLoop: the same arithmetic, reorganised for a chain of diffusion steps on fixed z:
                - z's embedding (cond_embed) is computed once per chain, the timestep embeddings once per
                  diffusion process, instead of at every step;
                - every adaLN modulation of a chain is computed before it runs, in one GEMM per block for
                  up to 1024 rows (steps x rows): it reads only silu(time + z embedding), known for every
                  step in advance, so its weights (60% of the head's) are read once per chain, not per step;
                - silu after fc1 is fused into the packed kernel, modulation and residual are addcmul;
                - under guidance the guided and unguided rows share x: its input projection runs once;
                - on the CPU, fp32 weights (and bf16 ones where the CPU has bf16 instructions) are reordered
                  once into oneDNN's blocked layout: at the few rows of a batch-1 chain (8 to 32) the default
                  GEMM path read MAR-B's head weights at ~10-17 GB/s where the reordered kernel reached 17-26
                  GB/s (measured on an AMD EPYC and an Intel Xeon with AMX: results/engine/);
                - the diffusion coefficients are float32 scalars (every row of a chain is at the same step).
                Outputs equal the reference to float rounding (tests/test_engine.py; verify_official.py
                checks one head call and a whole chain against the official code at 1e-5 relative).

    graphs      GraphedHeadLoop: fast, with each chain replayed from a CUDA graph (CUDA only). At batch 1 a
                chain is ~100 diffusion steps of ~100 small kernels each (MAR-H), which a GPU is expected to
                spend launching; a graph launches them as one. It is built to give fast's images bitwise; tests/test_cuda.py checks
                that on a GPU (make gpu-check), which has not yet run.

`prepare(model, engine)` readies a model for its engine and returns the head loop; with fast (and
graphs) it also repacks a bf16 model's widening transformer layers (see prepare).

The engine is a run setting (`engine=` in configs/sample.yaml), recorded in run records and part of a
run's identity when it is not the reference. A head with a cache of its own (LazyMAR's) on this loop's
model keeps its own diffusion loop but runs its network's parts on this loop's packed kernels
(gtr.method.HeadKernels); on another model's network it stays on that network's modules. The
fast loop runs any MAR's plain head (the model's, or a speculative method's draft's, each with its own
packed weights) and fills the trace that speculative verification asks for (sample_head's).
"""
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from gtr.config import ENGINES
from gtr.method import PlainHead
from gtr.models.diffusion import float32_unless_autocast, sample_head
from gtr.models.mar import Mlp, modulate


def head_loop(model, engine="reference"):
    """The diffusion loop (sample_head's signature) that `engine` runs on `model`."""
    if engine == "reference":
        return sample_head
    if engine == "fast":
        return FastHeadLoop(model)
    if engine == "graphs":
        return GraphedHeadLoop(model)
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


def cpu_has_bf16():
    """Whether oneDNN has native bf16 kernels on this CPU (avx512_bf16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (RuntimeError, AttributeError):
        return False


def prepare(model, engine="reference"):
    """Ready `model` for sampling on `engine` and return its head loop (see head_loop).

    With fast (and graphs), a bf16 model on a CPU with bf16 instructions also has the transformer's widening linear
    layers (more outputs than inputs: attention qkv, MLP fc1) repacked in place into oneDNN's layout: for
    them the packed kernel was faster at every row count measured (+25-60%), where for the narrowing ones
    (proj, fc2) it was slower at 448-640 rows, and in fp32 it gained nothing (results/engine/). Its
    MLPs' exact GELU is fused into fc1's packed kernel (computed on the fp32 accumulator before rounding
    to bf16; the transformer was 10% faster, MAR-B on an Intel Xeon with AMX). The packed copies are for sampling: prepare again after the weights change, and never train a prepared
    model (the packed layers pass no gradient); prepare(model, "reference") undoes it.
    """
    loop = head_loop(model, engine)
    head = set(model.diffloss.net.modules()) if hasattr(model, "diffloss") else set()
    for module in model.modules():  # undo an earlier prepare (another engine's)
        if isinstance(module.__dict__.get("forward"), (_Linear, _GeluMlp)):
            del module.forward
    if engine == "reference":
        return loop
    fused = set()
    for module in model.modules():  # the MLPs' fc1 with its GELU fused into the packed kernel: one pass less
        if (isinstance(module, Mlp) and module not in head and module.fc1.weight.dtype == torch.bfloat16
                and isinstance(module.act, torch.nn.GELU) and module.act.approximate == "none"
                and (module.drop.p == 0 or not module.training)):  # the fused MLP has no dropout
            mlp = _GeluMlp(module)
            if mlp.fc1_gelu.packed is not None:
                module.forward = mlp
                fused.add(module.fc1)
    for module in model.modules():
        if (isinstance(module, torch.nn.Linear) and module not in head and module not in fused
                and module.weight.dtype == torch.bfloat16 and module.out_features > module.in_features
                and module.bias is not None):
            packed = _Linear.of(module)
            if packed.packed is not None:
                module.forward = packed
    return loop


class _Linear:
    """y = act(x W^T + b), with W reordered for oneDNN where that kernel exists for it: fp32 on the CPU, and
    bf16 on a CPU with bf16 instructions (avx512_bf16 / AMX; elsewhere oneDNN's bf16 path is an emulation).
    act: None, "silu" or "gelu" (exact, erf), applied by the packed kernel to its fp32 accumulator."""

    # act: (oneDNN's post-op, its algorithm, the same in torch for the unpacked path)
    ACTIVATIONS = {None: ("none", "", lambda y: y), "silu": ("swish", "", F.silu), "gelu": ("gelu", "none", F.gelu)}

    def __init__(self, weight, bias, act=None):
        if act not in self.ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; choose one of {list(self.ACTIVATIONS)}")
        self.weight, self.bias, self.act = weight.detach(), bias.detach(), act
        self.packed = None
        if weight.device.type == "cpu" and torch.backends.mkldnn.is_available() and (
                weight.dtype == torch.float32 or (weight.dtype == torch.bfloat16 and cpu_has_bf16())):
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight)
            except (RuntimeError, AttributeError):  # a torch build without the op: the plain kernel
                self.packed = None

    def __call__(self, x):
        attr, algorithm, act = self.ACTIVATIONS[self.act]
        if self.packed is not None and x.dtype == self.weight.dtype and not torch.is_autocast_enabled("cpu"):
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, attr, [], algorithm)
        return act(F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype)))

    @classmethod
    def of(cls, linear, act=None):
        """The layer `linear`, followed by `act` if asked (fused into the packed kernel: one pass less)."""
        return cls(linear.weight, linear.bias, act)


class _GeluMlp:
    """A transformer MLP (fc1, exact GELU, fc2; dropout is off when sampling) with GELU fused into fc1's
    packed kernel: in bf16 the unfused GELU was a separate pass over the widest activations (MAR-B, 2
    threads, Intel Xeon with AMX: the transformer 10% faster)."""

    def __init__(self, mlp):
        self.fc1_gelu, self.fc2 = _Linear.of(mlp.fc1, act="gelu"), mlp.fc2

    def __call__(self, x):
        return self.fc2(self.fc1_gelu(x))


class FastHeadLoop:
    """sample_head for MAR's head network (gtr/models/mar.py HeadMLP), organised per chain (see module doc).

    Built once per model (it copies the head's weights into the kernels' layout): build it again after
    the weights change.
    """
    # Rows of one modulations GEMM (steps x rows of a chain): enough to make it compute-bound, while its
    # output stays small (MAR-H: 1024 rows x 58k modulations x 4 bytes = 240 MB).
    MODULATION_ROWS = 1024

    def __init__(self, model):
        self.model = model
        net = model.diffloss.net
        self.net = net
        self.time_embed = net.time_embed
        self.cond_embed = _Linear.of(net.cond_embed)
        self.input_proj = _Linear.of(net.input_proj)
        # (Stacking every block's adaLN matrix into one call was measured slower on the CPU: 17 vs 25 GB/s.)
        self.blocks = [(_Linear.of(block.adaLN_modulation[1]), block.in_ln, _Linear.of(block.mlp[0], act="silu"),
                        _Linear.of(block.mlp[2])) for block in net.res_blocks]
        self.final_adaln = _Linear.of(net.final_layer.adaLN_modulation[1])
        self.final_linear = _Linear.of(net.final_layer.linear)
        self.time_tables, self.coefficient_tables = {}, {}
        self.others = {}  # id(model) -> (model, its FastHeadLoop), for other models' plain heads

    def time_table(self, process, like):
        """time_embed of every timestep of `process` in the chain's order, last timestep first (S, W);
        computed once per process and dtype (and sliced, not indexed, by the chain: no host-to-device
        copy of indices, which a CUDA graph could not capture)."""
        key = (tuple(process.timesteps), like.dtype, like.device)
        if key not in self.time_tables:
            t = torch.as_tensor(process.timesteps, device=like.device)
            self.time_tables[key] = self.time_embed(t).to(like.dtype).flip(0)
        return self.time_tables[key]

    def coefficients(self, process):
        """Per step of `process`: the float32 values the reference reads from its float64 tables."""
        key = tuple(process.timesteps)
        if key not in self.coefficient_tables:
            tables = (process.posterior_log_variance_clipped, process.log_betas, process.sqrt_recip_alphas_cumprod,
                      process.sqrt_recipm1_alphas_cumprod, process.posterior_mean_coef1, process.posterior_mean_coef2)
            self.coefficient_tables[key] = [tuple(float(torch.tensor(t[i]).float()) for t in tables)
                                            for i in range(process.num_steps)]
        return self.coefficient_tables[key]

    def __call__(self, head, cond, process, noise, uncond=None, cfg=1.0, temperature=1.0, trace=None):
        if getattr(head, "kernels", False) is None and getattr(head, "net", None) is self.net:
            head.kernels = self  # a head that runs the network's parts itself (gtr.method.HeadKernels)
        owner = getattr(getattr(head, "net", None), "__self__", None)  # the model whose plain head this is
        if not isinstance(head, PlainHead) or not hasattr(owner, "diffloss"):
            return sample_head(head, cond, process, noise, uncond=uncond, cfg=cfg, temperature=temperature,
                               trace=trace)
        if owner is not self.model:  # another model's head (a speculative method's draft): its own fast loop
            if id(owner) not in self.others:
                self.others[id(owner)] = (owner, FastHeadLoop(owner))
            return self.others[id(owner)][1](head, cond, process, noise, uncond, cfg, temperature, trace)
        n, channels, steps = noise.shape[0], noise.shape[2], process.num_steps
        if n == 0:
            return noise[:, 0]
        if noise.shape[1] < 1 + steps:
            raise ValueError(f"noise has {noise.shape[1]} columns, {1 + steps} needed")
        guided = uncond is not None
        c = torch.cat([cond, uncond]) if guided else cond
        if guided and torch.is_tensor(cfg):
            cfg = cfg.view(-1, 1).to(noise.dtype)
        c_emb = self.cond_embed(c)
        times = self.time_table(process, c_emb)
        coef = self.coefficients(process)
        order = list(reversed(range(steps)))  # timesteps, last first; k counts the chain's steps
        chunk = max(1, self.MODULATION_ROWS // c_emb.shape[0])
        x = noise[:, 0]
        for start in range(0, steps, chunk):
            # adaLN reads only y = silu(time + z embedding), known for every step before the chain runs:
            # one GEMM per block for `chunk` steps instead of one weight read per step.
            idx = order[start:start + chunk]
            mods = self.modulations(times[start:start + len(idx)][:, None] + c_emb[None])
            for j, i in enumerate(idx):
                out = float32_unless_autocast(self.net_out(x, [[part[j] for part in m] for m in mods], guided))
                if guided:
                    eps_c, eps_u = out[:n, :channels], out[n:, :channels]
                    eps, var_values = eps_u + cfg * (eps_c - eps_u), out[:n, channels:]
                else:
                    eps, var_values = out[:, :channels], out[:, channels:]
                eps, var_values = eps.float(), var_values.float()
                min_log, max_log, recip, recipm1, coef1, coef2 = coef[i]
                # The reference's arithmetic and order (Diffusion.p_mean_logvar), with scalar coefficients.
                frac = (var_values + 1) / 2
                log_var = frac * max_log + (1 - frac) * min_log
                mean = coef1 * (recip * x - recipm1 * eps) + coef2 * x
                if i > 0:
                    x = mean + torch.exp(0.5 * log_var) * noise[:, start + j + 1] * temperature
                    if trace is not None:  # as sample_head's trace: log std summed from the first step down
                        log_std = 0.5 * log_var if start + j == 0 else log_std + 0.5 * log_var
                else:
                    x = mean
        if trace is not None:
            trace.update(mean=x, std=torch.exp(0.5 * log_var) * temperature,
                         log_std=log_std if steps > 1 else torch.zeros_like(x))
        return x

    def modulations(self, y):
        """Every adaLN modulation for y (steps, rows, W), the time + z embeddings of some steps: per block
        (shift, 1 + scale, gate) and for the final layer (shift, 1 + scale), each (steps, rows, W)."""
        steps, rows, width = y.shape
        flat = F.silu(y).reshape(steps * rows, width)
        mods = []
        for adaln in [block[0] for block in self.blocks] + [self.final_adaln]:  # 3 (blocks) or 2 (final) parts
            parts = list(adaln(flat).view(steps, rows, -1).chunk(adaln.weight.shape[0] // width, dim=-1))
            parts[1] = parts[1] + 1
            mods.append(parts)
        return mods

    # The head network's parts on this loop's kernels, for a head that runs them itself (gtr.method.HeadKernels).
    def embed(self, t, c):
        return self.time_embed(t) + self.cond_embed(c)

    def input(self, x):
        return self.input_proj(x.to(self.input_proj.weight.dtype))

    def modulation(self, j, y):
        return self.blocks[j][0](F.silu(y)).chunk(3, dim=-1)

    def mlp(self, j, h, shift, scale):
        _, norm, fc1_silu, fc2 = self.blocks[j]
        return fc2(fc1_silu(modulate(norm(h), shift, scale)))

    def final(self, h, y):
        shift, scale = self.final_adaln(F.silu(y)).chunk(2, dim=-1)
        return self.final_linear(modulate(self.net.final_layer.norm_final(h), shift, scale))

    def head(self, x, t, c):
        """One head call as the reference makes it, (x, t, z) -> (eps, variance values), on this engine's
        kernels (to compare with the official head)."""
        mods = self.modulations((self.time_embed(t) + self.cond_embed(c))[None])
        return self.net_out(x, [[part[0] for part in m] for m in mods], guided=False)

    def net_out(self, x, mods, guided):
        """The head network on noisy tokens x (n, C) given one step's adaLN modulations `mods` (see
        modulations; rows = n, or 2n under guidance, where x is shared by the guided and unguided halves)."""
        h = self.input_proj(x.to(mods[0][0].dtype))
        if guided:
            h = torch.cat([h, h])
        for (_, norm, fc1_silu, fc2), (shift, scale_1, gate) in zip(self.blocks, mods):
            u = torch.addcmul(shift, F.layer_norm(h, norm.normalized_shape, norm.weight, norm.bias, norm.eps), scale_1)
            h = torch.addcmul(h, gate, fc2(fc1_silu(u)))
        shift, scale_1 = mods[-1]
        final = self.net.final_layer.norm_final
        return self.final_linear(torch.addcmul(shift, F.layer_norm(h, final.normalized_shape, None, None, final.eps),
                                               scale_1))


def _matmul_flags():
    """The CUDA matmul settings that pick cuBLAS kernels (so a captured graph's): fp32 precision (TF32 or
    not) and reduced-precision reductions in fp16 and bf16. torch >= 2.9 reads fp32 precision through
    its newer setting, which also reflects the older ones (allow_tf32, set_float32_matmul_precision);
    reading an older one raises once the newer one was set."""
    matmul = torch.backends.cuda.matmul
    fp32 = getattr(matmul, "fp32_precision", None)
    if fp32 is None:
        fp32 = (matmul.allow_tf32, torch.get_float32_matmul_precision())
    return (fp32, matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction)


class GraphedHeadLoop(FastHeadLoop):
    """FastHeadLoop with each chain captured once as a CUDA graph and replayed (engine=graphs; CUDA only).

    A graph is captured for each new shape and setting of a chain (rows, diffusion process, guidance
    scale, temperature, dtypes, autocast) and replayed for every later chain that has them. Under MAR's
    linear cfg schedule that is about one graph per AR step, shared by every batch of a run (the last,
    shorter batch of a run adds its own). A replay copies the chain's inputs into the graph's buffers
    and its output out of them, so nothing of one chain is baked into the next and the images should
    equal engine=fast's bitwise (tests/test_cuda.py checks it on a GPU; make gpu-check). The graphs
    share one memory pool, which is safe because a replay's output is copied out before the next
    replay; they are kept for the loop's life (a run makes about one per AR step and batch size). Chains
    the graphs do not cover run as FastHeadLoop runs them: on the CPU, with a trace (speculative
    verification), a tensor temperature, and for heads other than this model's plain one (a head cache,
    a draft model). As FastHeadLoop, it holds the weights it was built with: build it again after the
    weights change.
    """

    def __init__(self, model):
        super().__init__(model)
        self.graphs = {}  # chain key -> (CUDAGraph, its input buffers, its output buffer)
        self.pool = None

    def __call__(self, head, cond, process, noise, uncond=None, cfg=1.0, temperature=1.0, trace=None):
        owner = getattr(getattr(head, "net", None), "__self__", None)
        if not (noise.is_cuda and trace is None and isinstance(head, PlainHead) and owner is self.model
                and noise.shape[0] > 0 and not torch.is_tensor(temperature)
                and (not torch.is_tensor(cfg) or cfg.device == noise.device)):
            return super().__call__(head, cond, process, noise, uncond, cfg, temperature, trace)
        autocast = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        # Everything a capture fixes: the shapes, dtypes and device of the inputs, the process, a Python
        # guidance scale and the temperature (kernels take them as arguments; a tensor scale is an input),
        # autocast, and the matmul precision flags (they pick the kernels).
        key = tuple((tuple(t.shape), t.dtype, t.device) if torch.is_tensor(t) else t for t in (cond, uncond, noise)) + (
            tuple(process.timesteps), ("tensor", tuple(cfg.shape), cfg.dtype) if torch.is_tensor(cfg) else float(cfg),
            float(temperature), autocast, *_matmul_flags())
        with torch.cuda.device(noise.device):  # torch.cuda.graph captures on the current device's streams
            if key not in self.graphs:
                self.graphs[key] = self.capture(head, cond, process, noise, uncond, cfg, temperature, autocast)
            graph, inputs, out = self.graphs[key]
            for buffer, value in zip(inputs, (cond, uncond, noise, cfg)):
                if torch.is_tensor(buffer):
                    buffer.copy_(value)
            graph.replay()
            return out.clone()

    @torch.no_grad()  # (a replay records no autograd graph either)
    def capture(self, head, cond, process, noise, uncond, cfg, temperature, autocast):
        """One chain of these inputs' shapes and settings as a CUDA graph: (graph, input buffers, output)."""
        inputs = [t.clone() if torch.is_tensor(t) else t for t in (cond, uncond, noise, cfg)]

        def chain():
            return FastHeadLoop.__call__(self, head, inputs[0], process, inputs[2], inputs[1], inputs[3], temperature)

        # Warm up on a side stream first, as torch.cuda.graph asks: it fills the loop's tables outside the
        # graph's memory and lets lazily initialised libraries (cuBLAS) set up before the capture.
        side = torch.cuda.Stream(noise.device)
        side.wait_stream(torch.cuda.current_stream(noise.device))
        with torch.cuda.stream(side):
            chain()
        torch.cuda.current_stream(noise.device).wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # Autocast's cache of cast weights would be freed when its context ends while the graph still reads
        # it: the capture casts without the cache (the same values), as torch's make_graphed_callables asks.
        with (torch.autocast("cuda", dtype=autocast, cache_enabled=False) if autocast else nullcontext()), \
                torch.cuda.graph(graph, pool=self.pool):
            out = chain()
        return graph, inputs, out
