"""The tiny world: training a few steps, resuming, exporting, and the demo pipeline on a handful of images."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from gtr.checkpoints import load_mar
from gtr.models.mar import build_mar

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two steps of training on 64 images, then a resumed third step, then the export."""
    train = load_script("train")
    out = tmp_path_factory.mktemp("tiny")
    common = ["--out", str(out), "--limit-data", "64", "--batch-size", "16", "--save-every", "1", "--log-every", "1",
              "--warmup", "2", "--threads", "1"]
    train.main([*common, "--steps", "2"])
    first = torch.load(out / "checkpoint-last.pth", weights_only=False)
    train.main([*common, "--steps", "3"])
    return out, first


def test_training_steps_resume_and_export(trained):
    out, first = trained
    state = torch.load(out / "checkpoint-last.pth", weights_only=False)
    assert first["step"] == 2 and state["step"] == 3
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(r["loss"] == r["loss"] for r in log)
    # the resumed step continued the same run: the data order was carried over
    assert torch.equal(state["epoch_order"], first["epoch_order"]) and state["epoch_pos"] == first["epoch_pos"] + 16
    changed = any(not torch.equal(a, b) for a, b in zip(state["model"].values(), first["model"].values()))
    assert changed
    model = load_mar(build_mar("mar_tiny"), str(out / "tiny_mar_ema.pth"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["model_ema"][k]), k
    assert json.loads((out / "train_config.json").read_text())["step"] == 3


def test_resume_refuses_another_model(trained, tmp_path):
    train = load_script("train")
    out, _ = trained
    with pytest.raises(SystemExit, match="holds model 'mar_tiny', not 'mar_test'"):
        train.main(["--out", str(out), "--model", "mar_test", "--steps", "4"])


def test_demo_pipeline_on_a_handful_of_images(trained, tmp_path):
    pytest.importorskip("torch_fidelity")
    demo = load_script("demo")
    out, _ = trained
    demo.main(["--checkpoint", str(out / "tiny_mar_ema.pth"), "--out", str(tmp_path), "--per-class", "1",
               "--batch-size", "5", "--threads", "1", "--rows", "mar16", "gtr2", "raster"])
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")}
    assert set(records) == {"mar16", "gtr2", "raster"}
    for r in records.values():
        assert r["num_images"] == 10 and r["flops_T"] > 0 and r["latency_cpu_s"] > 0
        assert 0.0 <= r["accuracy"] <= 1.0 and r["fid"] == r["fid"]
    # GtR with 2 steps and 50 -> 20 diffusion steps costs less than MAR with 16 steps and 100
    assert records["gtr2"]["flops_T"] < records["mar16"]["flops_T"]
    text = (tmp_path / "README.md").read_text()
    assert "Table 1" in text and "Table 5" in text
    assert (tmp_path / "fid_vs_flops.png").stat().st_size > 0 and (tmp_path / "grids" / "gtr2.png").exists()
    # a rerun skips finished rows and gives the same record
    before = (tmp_path / "runs" / "gtr2.json").read_text()
    demo.main(["--checkpoint", str(out / "tiny_mar_ema.pth"), "--out", str(tmp_path), "--per-class", "1",
               "--rows", "gtr2"])
    assert (tmp_path / "runs" / "gtr2.json").read_text() == before


def test_demo_refuses_unknown_rows_and_missing_checkpoint(tmp_path):
    demo = load_script("demo")
    with pytest.raises(SystemExit, match="unknown demo rows"):
        demo.main(["--rows", "nope"])
    with pytest.raises(SystemExit, match="make train-tiny"):
        demo.main(["--checkpoint", str(tmp_path / "missing.pth")])
