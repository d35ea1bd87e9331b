"""The tiny world: training a few steps, resuming, exporting, and the demo pipeline on a handful of images."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from gtr.checkpoints import load_mar
from gtr.config import compose
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


def test_training_refuses_a_device_it_cannot_use(tmp_path):
    train = load_script("train")
    for bad in ("gpu0", "meta"):
        with pytest.raises(SystemExit, match="^error: device must be"):
            train.main(["--out", str(tmp_path), "--device", bad])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="^error: device=cuda but CUDA is not available"):
            train.main(["--out", str(tmp_path), "--device", "cuda"])
    else:
        with pytest.raises(SystemExit, match="CUDA device"):
            train.main(["--out", str(tmp_path), "--device", f"cuda:{torch.cuda.device_count()}"])
    assert not list(tmp_path.iterdir())  # refused before any work


def test_resume_refuses_another_model(trained, tmp_path):
    train = load_script("train")
    out, _ = trained
    with pytest.raises(SystemExit, match="holds model 'mar_tiny', not 'mar_test'"):
        train.main(["--out", str(out), "--model", "mar_test", "--steps", "4"])


DEMO = ["threads=1", "batch_size=5", "n=10"]  # 1 image per class and row


def test_demo_pipeline_on_a_handful_of_images(trained, tmp_path):
    demo = load_script("demo")
    out, _ = trained
    ckpt = f"model.checkpoint={out / 'tiny_mar_ema.pth'}"
    demo.main(["-m", "experiment=demo", "+experiment/demo=mar16,gtr2,raster", ckpt, f"records={tmp_path}", *DEMO])
    runs = tmp_path / "demo" / "runs"
    records = {p.stem: json.loads(p.read_text()) for p in runs.glob("*.json")}
    assert set(records) == {"tiny__mar16", "tiny__gtr2", "tiny__raster"}
    for r in records.values():
        assert r["num_images"] == 10 and r["flops_T"] > 0 and r["latency_cpu_s"] > 0 and r["table"] == "demo"
        assert 0.0 <= r["accuracy"] <= 1.0 and r["fid"] == r["fid"] and r["family"]
    # GtR with 2 steps and 50 -> 20 diffusion steps costs less than MAR with 16 steps and 100
    assert records["tiny__gtr2"]["flops_T"] < records["tiny__mar16"]["flops_T"]
    text = (tmp_path / "demo" / "README.md").read_text()
    assert "Every row" in text and "Table 1" in text and "Table 5" in text
    summary = (tmp_path / "demo" / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("row,family,method,group,flops_G") and len(summary) == 4
    assert ",precision,precision_lo,precision_hi,recall," in summary[0]
    assert (tmp_path / "demo" / "fid_vs_flops.png").stat().st_size > 0
    assert (tmp_path / "demo" / "fid_vs_latency.png").stat().st_size > 0
    assert (tmp_path / "demo" / "grids" / "gtr2.png").exists()
    for r in records.values():  # every score inside its interval, recall without one; the barely
        for name in ("fid", "kid", "is", "accuracy", "knn_precision"):  # trained model can pin a rate at 0 or 1
            assert r[f"{name}_lo"] <= r[name] <= r[f"{name}_hi"], name
        assert r["fid_hi"] - r["fid_lo"] > 0 and r["kid_hi"] - r["kid_lo"] > 0
        assert 0.0 <= r["knn_recall"] <= 1.0 and "knn_recall_lo" not in r
        assert r["precision"] == "autocast"  # the run's dtype protocol, not overwritten by the k-NN score
    claims = (tmp_path / "demo" / "claims.md").read_text()  # C3 tests gtr vs raster; gtr was not run
    assert "| gtr better raster | | | | | | not run (gtr missing) |" in claims
    # a rerun skips finished rows and gives the same record; a row whose features are gone is redone
    before = (runs / "tiny__gtr2.json").read_text()
    demo.main(["experiment=demo", "+experiment/demo=gtr2", ckpt, f"records={tmp_path}", *DEMO])
    assert (runs / "tiny__gtr2.json").read_text() == before
    (tmp_path / "demo" / "features" / "gtr2.npz").unlink()
    demo.main(["experiment=demo", "+experiment/demo=gtr2", ckpt, f"records={tmp_path}", *DEMO])
    assert (tmp_path / "demo" / "features" / "gtr2.npz").is_file()
    # a method of one's own becomes a row of the tables (no experiment named: experiment=tiny)
    demo.main(["method=halton", "method.num_iter=3", ckpt, f"records={tmp_path}", *DEMO])
    assert len(list(runs.glob("tiny__halton-it3*.json"))) == 1
    assert "halton-it3" in (tmp_path / "demo" / "README.md").read_text()


def test_demo_refuses_unknown_rows_and_missing_checkpoint(tmp_path):
    demo = load_script("demo")
    with pytest.raises(SystemExit, match="unknown experiment/demo 'nope'"):
        demo.main(["experiment=demo", "+experiment/demo=nope"])
    with pytest.raises(SystemExit, match="scripts/train.py"):
        demo.main([f"model.checkpoint={tmp_path / 'missing.pth'}", f"records={tmp_path}"])


def test_a_report_tests_the_claims_its_rows_name(capsys):
    """demo.claims picks the claims file of a report (the engine's rows test configs/claims_engine.yaml);
    a name that is no claims file is one line before any work."""
    from eval.claims import CLAIMS, claims_path, load_claims
    from gtr.config import compose
    assert claims_path() == CLAIMS and set(load_claims(claims_path("claims_engine"))) == {"E1", "E2"}
    rows = compose(["experiment=bench_tiny_engine"])
    assert {c.demo.claims for c in rows} == {"claims_engine"} and {c.demo.claims for c in compose(["experiment=demo"])} == {"claims"}
    named = {row for claim in load_claims(claims_path("claims_engine")).values() for test in claim["tests"] for row in test[::2]}
    assert {f"tiny/{row}" for row in named} == {c.key for c in rows}
    for name in ("nope", "../claims", "table1"):  # table1.yaml is no claims file (it is not in configs/ itself)
        with pytest.raises(ValueError, match="demo.claims must name a claims file"):
            claims_path(name)
    demo = load_script("demo")
    with pytest.raises(SystemExit) as stop:
        demo.main(["experiment=tiny", "demo.claims=nope"])
    assert str(stop.value) == "error: demo.claims must name a claims file in configs/ (e.g. claims), got 'nope'"


def test_a_measurement_cannot_overwrite_what_the_run_was():
    from eval.records import run_record
    cfg = compose(["experiment=tiny", "method=gtr"])[0]
    with pytest.raises(ValueError, match="precision"):
        run_record(cfg, "cpu", flops_T=1.0, precision=0.9)


@pytest.mark.parametrize("folder", ["demo", "tiny_engine", "tiny_cspd", "cfg_scan"])
def test_committed_tiny_world_summaries_follow_from_their_records(folder):
    """Each committed summary.csv is what eval.tiny_world.summary makes of the committed records."""
    from eval.records import read_records
    from eval.tiny_world import summary
    out = ROOT / "results" / folder
    records = list(read_records(out / "runs").values())
    assert records and all(r["precision"] in ("autocast", "cast") for r in records)
    assert summary(records).to_csv(index=False) == (out / "summary.csv").read_text()  # what report() writes


def test_the_tiny_world_takes_another_token_grid(tmp_path):
    """The 16x16 tiny MAR (256 tokens, ImageNet's sequence) runs Table 1's rows as the paper writes them
    (8 AR steps; GtR's stage budget) through the same demo, report and claims (one training step of weights)."""
    train, demo = load_script("train"), load_script("demo")
    out = tmp_path / "tiny16_mar"  # one training step on 16 images: loadable weights of the 16x16 model
    train.main(["--model", "mar_tiny16", "--out", str(out), "--limit-data", "16", "--batch-size", "16", "--steps", "1",
                "--warmup", "1", "--threads", "1"])
    demo.main(["experiment=tiny16", "+experiment/table1=s8_step,s8_gtr", f"model.checkpoint={out / 'tiny_mar_ema.pth'}",
               f"records={tmp_path}", *DEMO])
    runs = tmp_path / "tiny16" / "runs"
    records = {p.stem: json.loads(p.read_text()) for p in runs.glob("*.json")}
    assert set(records) == {"tiny16__step8__mar", "tiny16__step8__gtr"}
    assert records["tiny16__step8__mar"]["config"]["method"]["num_iter"] == 8  # unscaled: the paper's own count
    text = (tmp_path / "tiny16" / "README.md").read_text()
    assert text.startswith("# The tiny world (Fashion-MNIST MAR, 16x16 tokens, CPU)")
    assert "| step8/gtr better step8/step |" in (tmp_path / "tiny16" / "claims.md").read_text()
    assert (tmp_path / "tiny16" / "grids" / "step8_gtr.png").is_file()
