"""reproduce-tableN checks what is missing before any work; evaluate.py turns a run folder into a record."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduce_names_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    reproduce = load_script("reproduce")
    problems = reproduce.missing_prerequisites(1, ["mar_b"], str(tmp_path / "adm_in256_stats.npz"))
    text = "\n".join(problems)
    assert "FID reference statistics" in text and "adm_in256_stats.npz" in text
    assert "model mar_b" in text and "mar-base.safetensors" in text
    import torch
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in text
    assert "Table 2 needs LightGen" in reproduce.missing_prerequisites(2, [], None)[0]


def test_reproduce_exits_before_any_work(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "scripts/reproduce.py", "--table", "3", "--ref-stats",
                             str(tmp_path / "none.npz")], cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "cannot start, missing" in result.stdout and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_evaluate_scores_a_tiny_run(tmp_path):
    """A tiny random-weights run from scripts/sample.py becomes a run record with FID, IS and FLOPs."""
    pytest.importorskip("torch_fidelity")
    from eval.classifier import fmnist_reference_stats
    out = tmp_path / "outputs"
    cmd = [sys.executable, "scripts/sample.py", "model=tiny", "model.random_init=true", "method=gtr", "n=10",
           "device=cpu", "batch_size=10", f"out_root={out}", "table=demo", "key=tiny/gtr_test", "threads=1",
           "method.diffusion_steps=2", "method.steps.t_max=2", "method.steps.t_min=1", "method.steps.t_rec=1",
           "method.steps.t_detail=2"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    run_dir = next(out.rglob("run.json")).parent
    evaluate = load_script("evaluate")
    record = evaluate.evaluate_run(run_dir, str(fmnist_reference_stats()), feature_extractor="fmnist-classifier")
    assert record["key"] == "tiny/gtr_test" and record["num_images"] == 10
    assert record["flops_T"] > 0 and record["fid"] > 0 and record["is"] >= 1.0
    records = tmp_path / "records"
    with pytest.raises(SystemExit) as done:
        evaluate.main([str(run_dir), "--ref-stats", str(fmnist_reference_stats()), "--records", str(records),
                       "--feature-extractor", "fmnist-classifier"])
    assert done.value.code == 0
    saved = json.loads((records / "tabledemo" / "tiny__gtr_test.json").read_text())
    assert saved["fid"] == pytest.approx(record["fid"])
