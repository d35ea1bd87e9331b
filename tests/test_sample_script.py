"""scripts/sample.py end to end on the tiny random model (CPU): outputs, resume after SIGKILL, batch-size and
rank invariance, and clear refusals. Images of a random model saturate, so identity is also checked on
the raw tokens each shard keeps (eval.save_tokens=true). What is promised (README): at the same batch size a
run is bit for bit the same however it is sharded, ranked or resumed; another batch size changes only float
rounding (tokens to ~1e-6 of their scale, uint8 pixels by at most 1 where a value sits on a rounding edge)."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from helpers import assert_close_to_scale, assert_same_images

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "sample.py"
N = 8
# 16 AR steps x 2 diffusion steps: fast, yet slow enough per shard for the kill test to land mid-run.
FAST = ["model=tiny", "model.random_init=true", "method=mar", "method.num_iter=16", "method.diffusion_steps=2",
        f"n={N}", "shard_size=2", "device=cpu", "threads=1", "eval.save_tokens=true",
        "hydra.job_logging.root.level=WARNING"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def command(out_root, *extra):
    return [sys.executable, str(SCRIPT), *FAST, f"out_root={out_root}", *extra]


def load_script():
    spec = importlib.util.spec_from_file_location("sample_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SAMPLE = load_script()


def run(out_root, *extra, ok=True):
    """scripts/sample.py's Hydra main, in this process (a subprocess would spend seconds importing torch).
    Returns the exit code: 0, or what sys.exit was given (the script's one-line error, or hydra's 1)."""
    GlobalHydra.instance().clear()
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = [str(SCRIPT), *FAST, f"out_root={out_root}", *extra]
    try:
        os.chdir(out_root)
        SAMPLE.cli()
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = argv
        os.chdir(cwd)
        GlobalHydra.instance().clear()
    if ok:
        assert code in (0, None), code
    return code


def run_dir(out_root):
    dirs = [p.parent for p in Path(out_root).glob("tiny/*/shards")]
    assert len(dirs) == 1, dirs
    return dirs[0]


def tokens(folder):
    shards = sorted((folder / "shards").glob("shard_*.npz"))
    return np.concatenate([np.load(p)["tokens"] for p in shards])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, batch size 1: the images every other run must reproduce."""
    out_root = tmp_path_factory.mktemp("reference")
    run(out_root, "batch_size=1")
    return run_dir(out_root)


def test_a_run_writes_pngs_grid_npz_and_run_json(reference):
    with np.load(reference / "samples.npz") as d:
        images, labels = d["arr_0"], d["labels"]
    assert images.shape == (N, 32, 32, 1) and images.dtype == np.uint8
    assert labels.tolist() == np.linspace(0, 9, N).astype(int).tolist()  # 8 is not a multiple of 10: spread
    for i in range(N):
        png = np.asarray(Image.open(reference / "images" / f"{i:06d}.png"))
        assert np.array_equal(png, images[i, ..., 0]), f"PNG {i} differs from samples.npz"
    grid = Image.open(reference / "grid.png")
    # 8 images: 3 x 3 cells of 32 px + 2 px padding, under a caption of a few 14 px lines
    assert grid.size[0] == 3 * 34 + 2 and grid.size[1] > 3 * 34 + 2 and (grid.size[1] - 3 * 34 - 2 - 4) % 14 == 0
    record = json.loads((reference / "run.json").read_text())
    assert record["status"] == "done" and record["num_images"] == N and record["batch_size"] == 1
    assert record["dtype"] == "fp32" and record["device"].startswith("cpu") and record["torch_version"]
    assert record["git_commit"] and record["config"]["method"]["name"] == "mar"
    assert record["config"]["model"]["random_init"] is True
    assert record["sessions"][0]["images"] == N
    # the folder name encodes model, method and its knobs, cfg, seed, eval set and the settings hash
    assert reference.parent.name == "tiny"
    assert reference.name.startswith(f"mar-it16-d2_cfg{record['config']['cfg']}_seed0_preview_") and reference.name.endswith(
        record["settings_hash"])


def test_batch_size_changes_only_float_rounding(reference, tmp_path):
    run(tmp_path, "batch_size=4")
    other = run_dir(tmp_path)
    assert other.name == reference.name  # batch size is not part of the run's identity
    assert_close_to_scale(tokens(other), tokens(reference))
    with np.load(other / "samples.npz") as a, np.load(reference / "samples.npz") as b:
        assert_same_images(a["arr_0"], b["arr_0"])


def test_killed_run_resumes_to_the_same_images(reference, tmp_path, capsys):
    process = subprocess.Popen(command(tmp_path, "batch_size=1"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=ENV, cwd=tmp_path)
    deadline = time.time() + 240
    while not list(tmp_path.glob("tiny/*/shards/shard_000000.npz")):
        assert process.poll() is None, "the run ended before its first shard appeared"
        assert time.time() < deadline, "no shard after 240 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    folder = run_dir(tmp_path)
    done_before = len(list((folder / "shards").glob("shard_*.npz")))
    assert 1 <= done_before < N // 2 and not (folder / "samples.npz").exists()

    run(tmp_path, "batch_size=1")
    assert f"{done_before} already done" in capsys.readouterr().out  # resumed, not restarted
    sessions = json.loads((folder / "run.json").read_text())["sessions"]
    # every attempt is kept: the killed one with the shards it finished, the resumed one with the rest
    assert [r["images"] for r in sessions] == [2 * done_before, N - 2 * done_before]
    assert all(r["seconds"] > 0 for r in sessions)
    assert np.array_equal(tokens(folder), tokens(reference))
    assert (folder / "samples.npz").read_bytes() == (reference / "samples.npz").read_bytes()


def test_two_ranks_make_the_same_set(reference, tmp_path, capsys):
    run(tmp_path, "rank=1", "world_size=2", "batch_size=1")
    assert "rank 0 assembles" in capsys.readouterr().out
    folder = run_dir(tmp_path)
    assert not (folder / "samples.npz").exists()
    assert sorted(p.name for p in (folder / "shards").glob("shard_*.npz")) == ["shard_000001.npz", "shard_000003.npz"]
    run(tmp_path, "rank=0", "world_size=2", "batch_size=1")
    assert (folder / "samples.npz").read_bytes() == (reference / "samples.npz").read_bytes()


def test_a_folder_made_with_other_settings_is_not_resumed(reference, tmp_path, capsys):
    code = run(tmp_path, f"hydra.run.dir={reference}", "method.diffusion_steps=3", ok=False)
    assert "holds shards made with other settings" in str(code)
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("overrides,message", [
    (["method=nope"], "unknown method 'nope'; choose one of"),
    (["model=tiny", "model.random_init=false", "checkpoint=/no/such.pth"], "does not exist (check the path)"),
    (["model=tiny", "model.random_init=false", "model.checkpoint=/no/such.pth"], "scripts/train.py"),
    (["n=abc"], "n must be a positive number of images, got 'abc'"),
    (["n=0"], "n must be a positive number"),
    (["seed=-1"], "seed must be a non-negative integer"),
    (["cfg=-1"], "cfg (guidance scale) must be a number >= 0"),
    (["cfg=abc"], "cfg (guidance scale) must be a number"),
    (["cfg_schedule=cosine"], "cfg_schedule must be linear, linear_exact or constant"),
    (["temperature=-0.5"], "temperature must be a number >= 0"),
    (["batch_size=0"], "batch_size must be a positive integer"),
    (["shard_size=x"], "shard_size must be a positive integer"),
    (["dtype=fp8"], "dtype must be one of fp32, bf16, fp16"),
    (["device=tpu"], "device must be auto, cpu, cuda or cuda:N"),
    (["threads=0"], "threads must be null or a positive integer"),
    (["latency.batches=0"], "latency.batches must be an integer >= 1, got 0"),
    (["latency.warmup=-1"], "latency.warmup must be an integer >= 0"),
    (["model=nope"], "unknown model 'nope'; choose one of"),
    (["eval=nope"], "unknown eval 'nope'; choose one of"),
    (["labels=[3,10]"], "labels must be class ids in [0, 10)"),
    (["labels=[-1]"], "labels must be a list of class ids"),
    (["nosuchknob=1"], "Could not override 'nosuchknob'"),
    (["eval=fid10k", "n=15"], "not a multiple of the 10 classes"),
    (["model=lightgen", "model.random_init=true", "eval=geneval", "eval.prompts=null"], "needs a prompts file"),
    (["eval=geneval", f"eval.prompts={__file__}"], "class-conditional"),
    (["model=lightgen", "model.random_init=true", "eval=bench"], "text-to-image: choose a prompts eval set"),
    (["method=gtr", "method.order.num_stages=2"], "StageCounts has 3 stages but the StagedOrder has 2"),
])
def test_refusals_are_one_clear_message(tmp_path, capsys, overrides, message):
    code = run(tmp_path, *overrides, ok=False)
    err = capsys.readouterr().err
    assert code not in (0, None) and message in f"{code}\n{err}"
    assert "Traceback" not in err and "\n" not in str(code).strip()  # one line
    assert not any(tmp_path.iterdir()), "a refused command left a run folder"


def test_a_bad_value_from_the_shell_is_one_line_and_leaves_nothing(tmp_path):
    done = subprocess.run(command(tmp_path, "n=abc"), capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["error: n must be a positive number of images, got 'abc'"]
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- helpers
def test_labels_follow_the_official_protocol():
    s = SAMPLE
    assert s.make_labels(50000, 1000, True).tolist()[:51] == [0] * 50 + [1]  # np.arange(1000).repeat(50)
    assert np.bincount(s.make_labels(50000, 1000, True)).tolist() == [50] * 1000
    assert s.make_labels(5, 10, False, labels=[3, 4]).tolist() == [3, 4, 3, 4, 3]
    with pytest.raises(s.ConfigError, match="not a multiple"):
        s.make_labels(16, 1000, True, eval_name="fid50k")
    with pytest.raises(s.ConfigError, match=r"class ids in \[0, 10\)"):
        s.make_labels(4, 10, False, labels=[10])


def test_npz_is_readable_and_byte_stable(tmp_path):
    s = SAMPLE
    parts = [np.random.default_rng(i).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8) for i in range(2)]
    for name in ("a.npz", "b.npz"):
        s.write_npz(tmp_path / name, lambda: iter(parts), (6, 4, 4, 3), np.arange(6))
        time.sleep(1.1)  # a zip entry's time would differ by now
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as d:
        assert np.array_equal(d["arr_0"], np.concatenate(parts)) and d["labels"].tolist() == list(range(6))
