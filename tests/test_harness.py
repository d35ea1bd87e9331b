"""reproduce-tableN checks what is missing before any work; evaluate.py turns a run folder into a record."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduce_names_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("GTR_OFFLINE", "1")  # the official files cannot be fetched: each is named with its URL
    monkeypatch.setenv("GTR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GTR_WEIGHTS_MIRROR", raising=False)
    from gtr.config import compose
    reproduce = load_script("reproduce")
    text = "\n".join(reproduce.missing(compose(["experiment=table1", "model=mar_b"])))
    assert "mar_base: offline" in text and "dropbox.com" in text and str(tmp_path / "cache" / "weights") in text
    assert "vae: offline" in text and "fid_stats: offline" in text and "adm_in256_stats.npz" in text
    import torch
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in text
    table2 = "\n".join(reproduce.missing(compose(["experiment=table2"])))
    for key in ("checkpoint=PATH", "model.text_encoder=PATH", "model.vae_checkpoint=PATH", "eval.prompts",
                "eval.geneval_dir=PATH", "eval.detector=PATH"):
        assert key in table2, key
    not_geneval = tmp_path / "not_geneval"
    not_geneval.mkdir()
    table2 = "\n".join(reproduce.missing(compose(["experiment=table2", f"eval.geneval_dir={not_geneval}",
                                                   f"eval.detector={not_geneval}"])))
    assert "is not a GenEval checkout" in table2 and "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth" in table2


def test_table2_pipeline_on_cpu(tmp_path):
    """Table 2's path end to end with a random LightGen, random text states and a stand-in for GenEval's
    scorer (tests/data/geneval_stub.py: same CLI and results format): prompts -> images -> GenEval layout
    -> results -> a run record with the six task scores and the overall."""
    STUB = (ROOT / "tests" / "data" / "geneval_stub.py").read_text()
    prompts = tmp_path / "prompts.jsonl"
    entries = [{"tag": tag, "include": [{"class": "cat", "count": 1}], "prompt": f"a photo of a cat ({tag})"}
               for tag in ("single_object", "two_object", "counting", "colors", "position", "color_attr")]
    prompts.write_text("".join(json.dumps(e) + "\n" for e in entries))
    geneval = tmp_path / "geneval"
    (geneval / "evaluation").mkdir(parents=True)
    (geneval / "evaluation" / "evaluate_images.py").write_text(STUB)
    out = tmp_path / "outputs"
    cmd = [sys.executable, "scripts/sample.py", "experiment=table2", "+experiment/table2=s16_gtr", "hydra.mode=RUN",
           "model.random_init=true", "+model.overrides.img_size=128", "+model.overrides.pos_grid=2",
           "+model.overrides.width=32", "+model.overrides.depth=1", "+model.overrides.num_heads=2",
           "+model.overrides.text_depth=1", "+model.overrides.caption_channels=24", "+model.overrides.max_length=6",
           "+model.overrides.diffloss_d=1", "+model.overrides.diffloss_w=32",
           "+model.vae_overrides.block_out_channels=[8,8]", "+model.vae_overrides.norm_num_groups=8",
           "+model.vae_overrides.layers_per_block=1",
           "+model.vae_overrides.down_block_types=[DownEncoderBlock2D,DownEncoderBlock2D]",
           "+model.vae_overrides.up_block_types=[UpDecoderBlock2D,UpDecoderBlock2D]",
           "method.stages=3", "method.counts.rates=null", "method.steps.t_max=2", "method.steps.t_min=1",
           "method.steps.t_rec=1", "method.steps.t_detail=2", f"eval.prompts={prompts}", "eval.samples_per_prompt=2",
           "dtype=fp32", "device=cpu", "threads=1", "batch_size=4", f"out_root={out}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = next(out.rglob("run.json")).parent
    run = json.loads((run_dir / "run.json").read_text())
    assert run["key"] == "lightgen/step16/gtr" and run["num_images"] == 12
    with np.load(run_dir / "samples.npz") as d:
        # 8x8 tokens of 2x2 latent cells -> 16x16 latents -> the 2-level test VAE (one 2x upsampling) -> 32 px
        assert d["arr_0"].shape == (12, 32, 32, 3) and d["labels"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    evaluate = load_script("evaluate")
    from gtr.config import compose
    cfg = compose([a for a in cmd[2:] if not a.startswith("hydra.")] + [f"eval.geneval_dir={geneval}",
                                                                          f"eval.geneval_python={sys.executable}"])[0]
    assert Path(cfg.out_root) / cfg.run_name == run_dir  # the row's config names its run folder
    record = evaluate.evaluate_run(cfg, run_dir)
    # The stub marks sample 0000 of each prompt correct: every task 1/2, overall 1/2.
    assert [record[k] for k in ("single_obj", "two_obj", "counting", "colors", "position", "color_attr")] == [0.5] * 6
    assert record["overall"] == 0.5 and record["flops_T"] > 0
    assert sorted(p.name for p in (run_dir / "geneval" / "00005" / "samples").iterdir()) == ["0000.png", "0001.png"]


def test_reproduce_exits_before_any_work(tmp_path):
    env = {"GTR_OFFLINE": "1", "GTR_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "scripts/reproduce.py", "experiment=table3", f"out_root={tmp_path / 'out'}"],
                            cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "cannot start, missing" in result.stdout and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_evaluate_scores_a_tiny_run(tmp_path):
    """A tiny random-weights run from scripts/sample.py becomes a run record with FID, IS and FLOPs;
    scripts/evaluate.py finds the run folder from the same overrides."""
    from eval.classifier import fmnist_reference_stats
    out = tmp_path / "outputs"
    row = ["model=tiny", "model.random_init=true", "method=gtr", "n=10", "device=cpu", "batch_size=10",
           f"out_root={out}", "table=demo", "key=tiny/gtr_test", "threads=1", "method.diffusion_steps=2",
           "method.steps.t_max=2", "method.steps.t_min=1", "method.steps.t_rec=1", "method.steps.t_detail=2"]
    subprocess.run([sys.executable, "scripts/sample.py", *row], cwd=ROOT, check=True, capture_output=True, text=True)
    evaluate = load_script("evaluate")
    scoring = [f"+eval.ref_stats={fmnist_reference_stats()}", "+eval.feature_extractor=fmnist-classifier",
               f"records={tmp_path / 'records'}"]
    with pytest.raises(SystemExit) as done:
        evaluate.main([*row, *scoring])
    assert done.value.code == 0
    saved = json.loads((tmp_path / "records" / "runs" / "tabledemo" / "tiny__gtr_test.json").read_text())
    assert saved["key"] == "tiny/gtr_test" and saved["num_images"] == 10
    assert saved["flops_T"] > 0 and saved["fid"] > 0 and saved["is"] >= 1.0 and saved["family"] == "GtR"
    assert saved["fid_stats"]["sha256"] and saved["run_dir"].endswith(saved["config"]["run_name"])
    with pytest.raises(SystemExit) as done:  # another setting: no such run folder, said, exit 1
        evaluate.main([*row, "seed=5", *scoring])
    assert done.value.code == 1


def test_cpu_latency_script_writes_joinable_records_and_resumes(tmp_path, capsys):
    """scripts/latency.py on rows of an experiment (the tiny model standing in for MAR-B): one record per
    row in eval/tables.py's schema with latency_cpu_s; a second run skips the rows already measured."""
    from eval.tables import validate_record
    latency = load_script("latency")
    args = ["experiment=table1", "model=tiny", "+experiment/table1=s8_step,s8_halton", "threads=1",
            "latency.warmup=0", f"records={tmp_path}"]
    latency.main(args)
    records = sorted((tmp_path / "runs" / "latency_cpu").glob("*.json"))
    assert [p.name for p in records] == ["tiny__step8__halton.json", "tiny__step8__mar.json"]
    for path in records:
        record = validate_record(json.loads(path.read_text()), str(path))
        assert record["latency_cpu_s"] > 0 and record["table"] == 1 and record["batch_size"] == 1
        assert record["config"]["model"]["random_init"] is True
    before = [p.stat().st_mtime_ns for p in records]
    capsys.readouterr()
    latency.main(args)
    assert capsys.readouterr().out.count("measured before") == 2
    assert [p.stat().st_mtime_ns for p in records] == before


def test_git_commit_marks_code_changes_not_the_results_a_run_writes(tmp_path, monkeypatch):
    """Run records name their commit, "+dirty" when code changed; a run with records=results rewrites the
    committed results as it goes, which must not mark its own later records dirty."""
    import subprocess
    import gtr.runs
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", "commit", "-qm", "c")
    monkeypatch.setattr(gtr.runs, "ROOT", tmp_path)
    head = gtr.runs.git_commit()
    assert len(head) == 40
    (tmp_path / "results" / "r.json").write_text('{"a": 1}')
    assert gtr.runs.git_commit() == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert gtr.runs.git_commit() == head + "+dirty"
