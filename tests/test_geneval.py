"""Tests of eval/geneval.py: GenEval layout export, its scorer run as a subprocess (a stub here), summary."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from gtr.config import ConfigError

from eval import geneval as G

ROOT = Path(__file__).resolve().parents[1]

# Invented prompts in GenEval's metadata format (tag, include[, exclude], prompt), one or two per task.
PROMPTS = [
    {"tag": "single_object", "include": [{"class": "kettle", "count": 1}], "prompt": "a photo of a kettle"},
    {"tag": "single_object", "include": [{"class": "lamp", "count": 1}], "prompt": "a photo of a lamp"},
    {"tag": "two_object", "include": [{"class": "kettle", "count": 1}, {"class": "lamp", "count": 1}],
     "prompt": "a photo of a kettle and a lamp"},
    {"tag": "counting", "include": [{"class": "lamp", "count": 3}], "exclude": [{"class": "lamp", "count": 4}],
     "prompt": "a photo of three lamps"},
    {"tag": "colors", "include": [{"class": "kettle", "count": 1, "color": "green"}],
     "prompt": "a photo of a green kettle"},
    {"tag": "position", "include": [{"class": "lamp", "count": 1},
                                    {"class": "kettle", "count": 1, "position": ["left of", 0]}],
     "prompt": "a photo of a kettle left of a lamp"},
    {"tag": "color_attr", "include": [{"class": "lamp", "count": 1, "color": "red"},
                                      {"class": "kettle", "count": 1, "color": "blue"}],
     "prompt": "a photo of a red lamp and a blue kettle"},
]


def write_prompts(path, prompts=PROMPTS):
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return path


def make_run(run_dir, n, skip=()):
    """A fake gtr-bench run folder: images/{i:06d}.png, each a different small PNG."""
    (run_dir / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if i not in skip:
            Image.new("RGB", (8, 8), (i % 256, (7 * i) % 256, 3)).save(run_dir / "images" / f"{i:06d}.png")
    return run_dir


def result_line(layout, p, k, metadata, correct):
    """One results line as GenEval's evaluate_images.py writes it (pandas to_json, records, lines)."""
    row = {"filename": f"{layout}/{p:05d}/samples/{k:04d}.png", "tag": metadata["tag"],
           "prompt": metadata["prompt"], "correct": correct, "reason": "" if correct else "expected lamp>=1, found 0",
           "metadata": json.dumps(metadata), "details": json.dumps({"lamp": [[1.0, 2.0, 30.0, 40.0, 0.9]]})}
    return json.dumps(row).replace("/", "\\/")  # pandas escapes forward slashes


# ---------------------------------------------------------------- prompts

def test_tasks_are_genevals_tags_in_order():
    assert list(G.TASKS) == ["single_obj", "two_obj", "counting", "colors", "position", "color_attr"]
    assert list(G.TASKS.values()) == ["single_object", "two_object", "counting", "colors", "position", "color_attr"]


def test_read_prompts(tmp_path):
    path = write_prompts(tmp_path / "evaluation_metadata.jsonl")
    assert G.read_prompts(path) == PROMPTS
    path.write_text(path.read_text() + "\n\n")  # blank lines at the end are fine
    assert G.read_prompts(path) == PROMPTS


def test_read_prompts_from_env(tmp_path, monkeypatch):
    path = write_prompts(tmp_path / "p.jsonl")
    monkeypatch.setenv("GENEVAL_PROMPTS", str(path))
    assert len(G.read_prompts()) == len(PROMPTS)


def test_read_prompts_missing_file_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("GENEVAL_PROMPTS", raising=False)
    for path in (tmp_path / "nope.jsonl", None):
        with pytest.raises(ConfigError) as e:
            G.read_prompts(path)
        msg = str(e.value)
        assert isinstance(e.value, ValueError) and "\n" not in msg
        assert "prompts/evaluation_metadata.jsonl" in msg and "djghosh13/geneval" in msg
        assert "eval.prompts=PATH" in msg and "GENEVAL_PROMPTS" in msg


@pytest.mark.parametrize("bad", ["{not json", '{"tag": "colors"}', '["a", "b"]', ""])
def test_read_prompts_malformed_line_is_named(tmp_path, bad):
    lines = [json.dumps(p) for p in PROMPTS[:2]] + [bad] + [json.dumps(PROMPTS[2])]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="line 3"):
        G.read_prompts(path)


def test_image_prompt():
    assert [G.image_prompt(i, 4) for i in (0, 3, 4, 9)] == [(0, 0), (0, 3), (1, 0), (2, 1)]
    assert G.image_prompt(5, 1) == (5, 0)
    assert G.image_prompt(5) == (1, 1)  # GenEval's default: 4 samples per prompt


# ---------------------------------------------------------------- export

def test_export_layout(tmp_path):
    run = make_run(tmp_path / "run", len(PROMPTS) * 4)
    out = tmp_path / "layout"
    done = G.export_layout(run, PROMPTS, out)
    assert done["prompts"] == len(PROMPTS) and done["images"] == len(PROMPTS) * 4
    assert done["linked"] + done["copied"] == done["images"] and done["kept"] == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{p:05d}" for p in range(len(PROMPTS))]
    for p, metadata in enumerate(PROMPTS):
        folder = out / f"{p:05d}"
        # GenEval json.load()s this file: exactly one JSON object, the prompt's metadata
        assert json.loads((folder / "metadata.jsonl").read_text()) == metadata
        assert len((folder / "metadata.jsonl").read_text().strip().splitlines()) == 1
        assert sorted(f.name for f in (folder / "samples").iterdir()) == [f"{k:04d}.png" for k in range(4)]
        for k in range(4):
            src, dst = run / "images" / f"{p * 4 + k:06d}.png", folder / "samples" / f"{k:04d}.png"
            assert os.path.samefile(src, dst) or src.read_bytes() == dst.read_bytes()
    assert G.layout_images(out) == sorted(f"{p:05d}/samples/{k:04d}.png" for p in range(len(PROMPTS)) for k in range(4))


def test_export_copies_when_links_fail(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", len(PROMPTS) * 2)

    def no_link(*args):
        raise OSError(18, "Invalid cross-device link")
    monkeypatch.setattr(G.os, "link", no_link)
    done = G.export_layout(run, PROMPTS, tmp_path / "out", samples_per_prompt=2)
    assert done["copied"] == len(PROMPTS) * 2 and done["linked"] == 0
    dst = tmp_path / "out" / "00003" / "samples" / "0001.png"
    assert dst.read_bytes() == (run / "images" / "000007.png").read_bytes()
    assert not os.path.samefile(dst, run / "images" / "000007.png")


def test_export_is_idempotent_and_refreshes_changed_images(tmp_path):
    run = make_run(tmp_path / "run", len(PROMPTS) * 4)
    out = tmp_path / "layout"
    G.export_layout(run, PROMPTS, out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    again = G.export_layout(run, PROMPTS, out)
    assert again["kept"] == len(PROMPTS) * 4 and again["linked"] == again["copied"] == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before  # no leftovers (.tmp)
    # A new image under the same name (the run redone) replaces the exported one.
    (run / "images" / "000005.png").unlink()
    Image.new("RGB", (8, 8), (255, 0, 255)).save(run / "images" / "000005.png")
    G.export_layout(run, PROMPTS, out)
    assert (out / "00001" / "samples" / "0001.png").read_bytes() == (run / "images" / "000005.png").read_bytes()


def test_export_refuses_missing_images(tmp_path):
    run = make_run(tmp_path / "run", len(PROMPTS) * 4, skip={5, 6, 17})
    with pytest.raises(G.GenEvalError) as e:
        G.export_layout(run, PROMPTS, tmp_path / "out")
    msg = str(e.value)
    assert "3 of 28 images missing" in msg and "prompt indices: 1, 4" in msg
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_export_refuses_wrong_image_count(tmp_path):
    run = make_run(tmp_path / "run", len(PROMPTS) * 4 + 2)
    with pytest.raises(G.GenEvalError, match="holds 30 images, not 7 prompts x 4 = 28"):
        G.export_layout(run, PROMPTS, tmp_path / "out")
    with pytest.raises(G.GenEvalError, match="images missing"):  # e.g. samples_per_prompt too large
        G.export_layout(make_run(tmp_path / "run2", 28), PROMPTS, tmp_path / "out", samples_per_prompt=8)
    with pytest.raises(G.GenEvalError, match="does not exist"):
        G.export_layout(tmp_path / "no_run", PROMPTS, tmp_path / "out")


def test_export_refuses_stray_samples_in_out_dir(tmp_path):
    G.export_layout(make_run(tmp_path / "run4", len(PROMPTS) * 4), PROMPTS, tmp_path / "out")
    with pytest.raises(G.GenEvalError, match="export into an empty folder"):  # 0002.png, 0003.png would be scored
        G.export_layout(make_run(tmp_path / "run2", len(PROMPTS) * 2), PROMPTS, tmp_path / "out", samples_per_prompt=2)
    with pytest.raises(G.GenEvalError, match="export into an empty folder"):  # prompt folders 00003.. too
        G.export_layout(make_run(tmp_path / "run3", 3 * 4), PROMPTS[:3], tmp_path / "out")


# ---------------------------------------------------------------- summary

# Per task: one list of `correct` per prompt (prompts with unequal image counts, tasks with unequal totals).
HAND = {
    0: [True, True, True, True], 1: [False, False],          # single_object: 4/6 per image (per prompt: 1/2)
    2: [True, False, False, False],                           # two_object: 1/4 (any-correct per prompt: 1)
    3: [False, False, False, False],                          # counting: 0
    4: [True, True, False, False],                            # colors: 1/2
    5: [True, False],                                         # position: 1/2
    6: [True, True, True, False],                             # color_attr: 3/4
}
# overall = mean of the six task means = (2/3 + 1/4 + 0 + 1/2 + 1/2 + 3/4) / 6 = 4/9; the mean over all
# 24 images would be 11/24, and per-prompt means would give single_obj 1/2.
EXPECTED = {"single_obj": 2 / 3, "two_obj": 0.25, "counting": 0.0, "colors": 0.5, "position": 0.5,
            "color_attr": 0.75, "overall": 4 / 9}


def write_results(path, hand=HAND, layout="/data/layout", seed=0):
    lines = [result_line(layout, p, k, PROMPTS[p], c) for p, cs in hand.items() for k, c in enumerate(cs)]
    random.Random(seed).shuffle(lines)  # GenEval's order follows os.listdir: arbitrary
    path.write_text("\n".join(lines) + "\n")
    return path


def test_summarize_matches_hand_computed(tmp_path):
    s = G.summarize(write_results(tmp_path / "results.jsonl"))
    for key, value in EXPECTED.items():
        assert s[key] == pytest.approx(value, abs=1e-12), key
    assert s["overall"] != pytest.approx(11 / 24)
    assert s["num_images"] == 24 and s["num_prompts"] == 7 and s["missing_tasks"] == []
    assert [s[f"n_{t}"] for t in G.TASKS] == [6, 4, 4, 4, 2, 4]


def test_summarize_reads_pandas_written_results(tmp_path):
    pd = pytest.importorskip("pandas")
    rows = [json.loads(result_line("/data/layout", p, k, PROMPTS[p], c))
            for p, cs in HAND.items() for k, c in enumerate(cs)]
    path = tmp_path / "results.jsonl"
    with open(path, "w") as fp:  # the very call evaluate_images.py ends with
        pd.DataFrame(rows).to_json(fp, orient="records", lines=True)
    s = G.summarize(path)
    assert s["overall"] == pytest.approx(4 / 9) and s["single_obj"] == pytest.approx(2 / 3)


def test_summarize_missing_task(tmp_path):
    hand = {p: cs for p, cs in HAND.items() if p != 3}  # no counting results
    s = G.summarize(write_results(tmp_path / "r.jsonl", hand))
    assert s["counting"] is None and s["n_counting"] == 0 and s["missing_tasks"] == ["counting"]
    assert s["overall"] == pytest.approx((2 / 3 + 0.25 + 0.5 + 0.5 + 0.75) / 5)  # as GenEval: over tasks present
    assert "warning: no results for counting" in G.format_summary(s)


def test_summarize_refuses_bad_results(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("")
    with pytest.raises(G.GenEvalError, match="no results"):
        G.summarize(path)
    with pytest.raises(G.GenEvalError, match="not found"):
        G.summarize(tmp_path / "nope.jsonl")
    good = result_line("/l", 0, 0, PROMPTS[0], True)
    for bad, match in [("{oops", "line 2 is not valid JSON"), ('{"tag": "colors"}', "line 2 is not a GenEval result"),
                       ('{"tag": "colors", "correct": "yes"}', "line 2"), ("[1, 2]", "line 2")]:
        path.write_text(good + "\n" + bad + "\n")
        with pytest.raises(G.GenEvalError, match=match):
            G.summarize(path)
    path.write_text(good + "\n" + good.replace('"single_object"', '"spatial_3d"') + "\n")
    with pytest.raises(G.GenEvalError, match="unknown GenEval task tag 'spatial_3d'"):
        G.summarize(path)


# ---------------------------------------------------------------- GenEval's scorer (stub)

def test_evaluate_command(tmp_path):
    argv = G.evaluate_command(tmp_path / "layout", tmp_path / "r" / "results.jsonl", tmp_path / "geneval",
                              python="/envs/geneval/bin/python", detector_path=tmp_path / "det")
    assert argv == ["/envs/geneval/bin/python", str(tmp_path / "geneval" / "evaluation" / "evaluate_images.py"),
                    str(tmp_path / "layout"), "--outfile", str(tmp_path / "r" / "results.jsonl"),
                    "--model-path", str(tmp_path / "det")]
    argv = G.evaluate_command("layout", "results.jsonl", "geneval", extra=["--options", "threshold=0.3"])
    assert argv[0] == "python" and "--model-path" not in argv and argv[-2:] == ["--options", "threshold=0.3"]
    assert all(Path(argv[i]).is_absolute() for i in (1, 2, 4))  # paths survive cwd=geneval_dir


STUB = (Path(__file__).parent / "data" / "geneval_stub.py").read_text()  # same CLI and results format


@pytest.fixture
def scoring(tmp_path):
    """A fake GenEval checkout (stub scorer) and an exported layout of 7 prompts x 4 images."""
    geneval = tmp_path / "geneval"
    (geneval / "evaluation").mkdir(parents=True)
    (geneval / "evaluation" / "evaluate_images.py").write_text(STUB)
    layout = tmp_path / "layout"
    G.export_layout(make_run(tmp_path / "run", len(PROMPTS) * 4), PROMPTS, layout)
    return geneval, layout, tmp_path / "results" / "results.jsonl"


def calls(geneval):
    log = geneval / "evaluation" / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_run_evaluation_runs_then_skips(scoring, tmp_path):
    geneval, layout, outfile = scoring
    outfile.parent.mkdir()
    assert G.run_evaluation(layout, outfile, geneval, python=sys.executable, detector_path=tmp_path / "det") == outfile
    (call,) = calls(geneval)
    assert call["cwd"] == str(geneval.resolve())
    assert call["argv"] == [str(layout), "--outfile", str(outfile), "--model-path", str(tmp_path / "det")]
    s = G.summarize(outfile)
    assert s["num_images"] == 28 and all(s[t] == 0.25 for t in G.TASKS) and s["overall"] == pytest.approx(0.25)

    G.run_evaluation(layout, outfile, geneval, python=sys.executable)  # complete: not run again
    assert len(calls(geneval)) == 1
    G.run_evaluation(layout, outfile, geneval, python=sys.executable, force=True)
    assert len(calls(geneval)) == 2
    lines = outfile.read_text().splitlines()
    outfile.write_text("\n".join(lines[:-1]) + "\n")  # incomplete results: scored again
    G.run_evaluation(layout, outfile, geneval, python=sys.executable)
    assert len(calls(geneval)) == 3 and len(outfile.read_text().splitlines()) == 28


def test_run_evaluation_failure_carries_stderr(scoring, monkeypatch):
    geneval, layout, outfile = scoring
    monkeypatch.setenv("STUB_FAIL", "1")
    with pytest.raises(G.GenEvalError) as e:
        G.run_evaluation(layout, outfile, geneval, python=sys.executable)
    lines = str(e.value).splitlines()
    assert lines[0] == "GenEval's evaluate_images.py failed (exit 3): AssertionError: DEVICE == cuda"
    assert lines[-2:] == ["loading Mask2Former", "AssertionError: DEVICE == cuda"]
    assert not outfile.exists()


def test_run_evaluation_needs_a_geneval_checkout(scoring, tmp_path):
    _, layout, outfile = scoring
    with pytest.raises(G.GenEvalError) as e:
        G.run_evaluation(layout, outfile, tmp_path / "not_geneval")
    msg = str(e.value)
    assert "evaluate_images.py not found" in msg and "djghosh13/geneval" in msg
    assert "eval.geneval_dir=PATH" in msg and "eval.geneval_python=" in msg
    geneval, _, _ = scoring
    with pytest.raises(G.GenEvalError, match="no GenEval checkout given"):
        G.run_evaluation(layout, outfile, None)
    with pytest.raises(G.GenEvalError, match="cannot run GenEval's python"):
        G.run_evaluation(layout, outfile, geneval, python=str(tmp_path / "no" / "python"))
    with pytest.raises(G.GenEvalError, match="export"):
        G.run_evaluation(tmp_path / "empty_layout", outfile, geneval, python=sys.executable)


# ---------------------------------------------------------------- command line

def test_cli_export_score_summarize(scoring, tmp_path, capsys):
    geneval, _, outfile = scoring
    prompts = write_prompts(tmp_path / "p.jsonl")
    make_run(tmp_path / "run2", len(PROMPTS) * 4)
    assert G.main(["export", str(tmp_path / "run2"), "--prompts", str(prompts), "--out", str(tmp_path / "l2")]) == 0
    assert "7 prompts, 28 images" in capsys.readouterr().out
    assert G.main(["score", str(tmp_path / "l2"), "--geneval-dir", str(geneval), "--python", sys.executable,
                   "--outfile", str(outfile)]) == 0
    assert "overall" in capsys.readouterr().out
    assert G.main(["summarize", str(outfile), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"] == pytest.approx(0.25)


def test_cli_error_is_one_line_exit_2(scoring, tmp_path, monkeypatch, capsys):
    geneval, layout, outfile = scoring
    monkeypatch.setenv("STUB_FAIL", "1")
    assert G.main(["score", str(layout), "--geneval-dir", str(geneval), "--python", sys.executable,
                   "--outfile", str(outfile)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "error: GenEval's evaluate_images.py failed (exit 3): AssertionError: DEVICE == cuda"
    # (the scorer's own stderr lines come before it, echoed as it ran)


def test_cli_missing_prompts_subprocess(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GENEVAL_PROMPTS"}
    proc = subprocess.run([sys.executable, "-m", "eval.geneval", "export", str(tmp_path / "run"),
                           "--prompts", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: GenEval prompts file not found") and "eval.prompts=PATH" in proc.stderr
