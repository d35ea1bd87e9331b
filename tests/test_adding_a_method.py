"""README's "Adding a method", followed literally: its two files written into the tree (removed after),
then the method is sampled, counted, timed, swept and put in the tiny world's tables and plot, with no
other file touched. The registry promise of the project."""
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]


def readme_files():
    """{path: text} of the files README's recipe tells a user to write (a `path` line, then its code block)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Adding a method"):]
    section = section[:section.index("\n## ", 3)]
    return {m.group(1): m.group(2) for m in re.finditer(r"`([\w/.]+\.(?:py|yaml))`\n\n```\w*\n(.*?)```", section, re.S)}


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def readme_method():
    files = readme_files()
    assert sorted(files) == ["baselines/decay.py", "configs/method/decay.yaml"], sorted(files)
    written = []
    for path, text in files.items():
        target = ROOT / path
        assert not target.exists(), f"{target} exists already: the test would overwrite a file of yours"
        target.write_text(text)
        written.append(target)
    try:
        yield files
    finally:
        for target in written:
            target.unlink()
        sys.modules.pop("baselines.decay", None)


def test_readme_recipe_runs_everywhere(readme_method, tmp_path, capsys):
    out = [f"out_root={tmp_path / 'outputs'}", f"records={tmp_path / 'records'}", "threads=1"]
    # sampled (scripts/sample.py's command line, in this process)
    sample = load_script("sample")
    argv = sys.argv
    sys.argv = ["sample.py", "model=tiny", "method=decay", "n=4", "method.num_iter=4", *out,
                "hydra.job_logging.root.level=WARNING"]
    try:
        GlobalHydra.instance().clear()
        sample.cli()
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    runs = list((tmp_path / "outputs" / "tiny").glob("decay-it4-g0.8_*/run.json"))
    assert len(runs) == 1 and json.loads(runs[0].read_text())["status"] == "done"
    # counted at MAR-B's size
    load_script("flops").main(["model=mar_b", "method=decay", *out])
    record = json.loads(next((tmp_path / "records" / "runs" / "flops").glob("mar_b__decay-it64-g0.8*.json")).read_text())
    assert record["family"] == "Decay" and 0 < record["flops_T"] < 14.653  # fewer head steps than MAR's 100
    # timed
    load_script("latency").main(["model=tiny", "method=decay", "method.num_iter=4", "latency.warmup=0", *out])
    assert list((tmp_path / "records" / "runs" / "latency_cpu").glob("tiny__decay-it4*.json"))
    # swept into the tiny world's tables and plot
    load_script("demo").main(["-m", "method=decay", "method.steps.gamma=0.6,0.8", "method.num_iter=4",
                              "sweep=decay-gamma", "n=10", "batch_size=10", *out])
    demo = tmp_path / "records" / "demo"
    rows = [json.loads(p.read_text()) for p in (demo / "runs").glob("*.json")]
    assert sorted(r["config"]["method"]["steps"]["gamma"] for r in rows) == [0.6, 0.8]
    assert all(r["family"] == "Decay" and r["config"]["sweep"] == "decay-gamma" for r in rows)
    assert "decay-it4-g0.6" in (demo / "README.md").read_text()
    assert (demo / "fid_vs_flops.png").stat().st_size > 0
