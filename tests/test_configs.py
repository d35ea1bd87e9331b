"""The Hydra config tree (configs/): every model x method composes and builds, every method samples on
the tiny model and fills each position exactly once, slot swaps compose, invalid pairs are refused, the
experiment files compose row by row, and a `-m` sweep runs end to end."""
import copy
import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose as hydra_compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf

from gtr.build import build_method
from gtr.config import ConfigError, compose, register_resolvers
from gtr.engine import prepare
from gtr.load import build_model
from gtr.runs import settings_hash
from gtr.models.lightgen import MODEL_CONFIGS as LIGHTGEN_CONFIGS, LightGenConfig
from gtr.models.mar import MODEL_CONFIGS, MARConfig
from gtr.sampler import image_generator, sample

torch.set_num_threads(1)
register_resolvers()  # run_name's ${gtr_hash:}, as every entry point registers it

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
MODELS = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
METHODS = sorted(p.stem for p in (CONFIGS / "method").glob("*.yaml"))
SLOT_OPTIONS = [(slot, p.stem) for slot in ("order", "counts", "steps", "cache")
                for p in sorted((CONFIGS / "method" / slot).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
# Methods the brief asks for; a missing file is a defect, not a skip.
REQUIRED_METHODS = {"mar", "step16", "step8", "halton", "halton_cosine", "disa", "lazymar", "gtr", "gtr_nofts",
                    "gtr_fast", "gtr_t1b", "gtr_enc", "gtr_diff", "fts_random", "fts_low", "fts_full", "raster",
                    "subsample", "random"}


def cfg_of(*overrides, hydra_node=False):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose("sample", overrides=list(overrides), return_hydra_config=hydra_node)


def grid_of(cfg):
    if cfg.model.get("arch") == "lightgen":
        return LightGenConfig(**LIGHTGEN_CONFIGS[cfg.model.name]).grid
    return MARConfig(**MODEL_CONFIGS[cfg.model.name]).grid


def targets(cfg):
    return {slot: cfg.method[slot]._target_ for slot in ("order", "counts", "steps", "cache")}


def test_the_tree_has_what_the_brief_asks():
    assert set(MODELS) == {"mar_b", "mar_l", "mar_h", "tiny", "tiny16", "tiny_draft", "lightgen"}
    assert REQUIRED_METHODS <= set(METHODS), sorted(REQUIRED_METHODS - set(METHODS))
    assert {"fid50k", "fid10k", "bench", "demo", "geneval"} <= {p.stem for p in (CONFIGS / "eval").glob("*.yaml")}
    assert {f"table{i}" for i in range(1, 6)} <= set(EXPERIMENTS)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_every_model_and_method_composes_and_builds(model, method):
    draft = [f"method.draft={model}"] if method == "cspd" else []  # a draft of the model's own token grid
    if method == "cspd" and model == "tiny16":  # not trained here (a GPU is meant): its draft has no checkpoint
        draft.append("model.random_init=true")
    cfg = cfg_of(f"model={model}", f"method={method}", *draft)
    assert cfg.method.name == method and cfg.model.key == model
    for slot, target in targets(cfg).items():
        assert target, f"{method}: empty {slot} target"
    assert "gtr_hash" not in cfg.run_name and cfg.model.key in cfg.run_name  # resolves, encodes the model
    built = build_method(cfg.method, grid=grid_of(cfg))  # dry-runs order and counts on the model's grid
    assert built.name == method


def test_model_defaults():
    cfgs = {m: cfg_of(f"model={m}").model for m in MODELS if m != "lightgen"}
    assert {m: c.cfg for m, c in cfgs.items() if not m.startswith("tiny")} == {"mar_b": 2.9, "mar_l": 3.0, "mar_h": 3.2}
    assert {c.name for c in cfgs.values()} == {"mar_base", "mar_large", "mar_huge", "mar_tiny", "mar_tiny16", "mar_tiny_draft"}
    assert all(c.weights == "model_ema" and c.random_init is False for c in cfgs.values())
    assert cfgs["tiny"].decoder == "pixels" and cfgs["mar_h"].decoder == "vae"


@pytest.mark.parametrize("slot,option", SLOT_OPTIONS)
def test_every_slot_option_composes_into_mar(slot, option):
    cfg = cfg_of("method=mar", f"method/{slot}={option}")
    assert cfg.method.name == "mar"
    expected = OmegaConf.load(CONFIGS / "method" / slot / f"{option}.yaml")._target_
    assert cfg.method[slot]._target_ == expected
    build_method(cfg.method, grid=(16, 16))


def test_slot_swaps_keep_the_rest_of_the_method():
    cfg = cfg_of("method=gtr", "method/cache=lazymar")
    assert targets(cfg) == {"order": "gtr.gtr.StagedOrder", "counts": "gtr.gtr.StageCounts",
                            "steps": "gtr.gtr.StageSteps", "cache": "baselines.lazymar.LazyMAR"}
    cfg = cfg_of("method=gtr", "method/steps=disa")
    assert targets(cfg)["steps"] == "baselines.disa.DiSASteps" and targets(cfg)["order"] == "gtr.gtr.StagedOrder"


def test_shared_knobs_reach_the_slots():
    cfg = cfg_of("method=gtr", "method.stages=4")
    assert cfg.method.order.num_stages == 4 and cfg.method.counts.num_stages == 4
    cfg = cfg_of("method=halton", "method.num_iter=8")
    assert cfg.method.counts.num_iter == 8
    cfg = cfg_of("method=gtr_t1b")
    assert list(cfg.method.counts.steps) == [16, 3, 1] and cfg.method.counts.intra_stage == "cosine"
    cfg = cfg_of("method=gtr_enc")
    assert cfg.method.steps._target_ == "gtr.method.ConstantSteps" and cfg.method.steps.num_steps == 100
    cfg = cfg_of("method=gtr_diff")
    assert cfg.method.order._target_ == "gtr.method.RandomOrder" and cfg.method.steps.fts == "none"


def test_paper_budgets():
    """The counts the method files give on MAR's 16x16 grid (REFERENCE sections 3, 4, 4b)."""
    def counts(method, *extra):
        cfg = cfg_of("model=mar_h", f"method={method}", *extra)
        return build_method(cfg.method, grid=(16, 16)).counts((16, 16))
    assert len(counts("mar")) == 64 and counts("step16") == [2, 3, 7, 8, 11, 13, 15, 16, 19, 20, 22, 23, 23, 25,
                                                              24, 25]
    assert len(counts("gtr")) == 24 + 6 + 2
    assert len(counts("gtr_t1b")) == 20 and len(counts("gtr_fast")) == 9
    assert counts("halton") == [10, 10, 10, 11, 10, 11, 11, 12, 12, 13, 13, 15, 16, 19, 25, 58]


def test_the_clip_lives_in_the_steps_slot():
    """The diffusion process (its timestep clip) is the steps slot's: build_method alone gives it."""
    from baselines.disa import DISA_CLIP_TIMESTEPS
    def clip(*overrides):
        return build_method(cfg_of(*overrides).method).steps.clip_timesteps
    assert clip("method=disa") == DISA_CLIP_TIMESTEPS and clip("method=gtr_fast") == 950
    assert clip("method=mar") is None and clip("model=mar_b", "method=gtr") is None
    # the tiny model's config gives every method its clip (its samples need it), a method's own wins
    assert clip("model=tiny", "method=mar") == 950 and clip("model=tiny", "method=gtr") == 950
    assert clip("model=tiny", "method=mar", "method.clip_timesteps=null") is None


# ---------------------------------------------------------------- refusals
def test_stage_mismatch_is_refused():
    cfg = cfg_of("method=gtr", "method.order.num_stages=2")
    with pytest.raises(ConfigError, match="StageCounts has 3 stages but the StagedOrder has 2"):
        build_method(cfg.method)


def test_a_parameter_for_another_slot_class_is_refused_clearly():
    cfg = cfg_of("method=gtr_nofts", "method/steps=disa")
    with pytest.raises(ConfigError, match=r"steps slot baselines.disa.DiSASteps: .*unexpected keyword argument 'fts'"):
        build_method(cfg.method)


def test_a_method_that_does_not_fit_the_grid_is_refused():
    cfg = cfg_of("model=tiny", "method=gtr", "method.stages=9")
    with pytest.raises(ConfigError, match="does not fit the model's 8x8 token grid"):
        build_method(cfg.method, grid=grid_of(cfg))
    cfg = cfg_of("model=tiny", "method=gtr_fast", "method.stages=4")  # 3 stage step counts for 4 stages
    with pytest.raises(ConfigError, match="one step count per stage"):
        build_method(cfg.method, grid=grid_of(cfg))


def test_disa_steps_without_the_clip_are_flagged(caplog):
    cfg = cfg_of("method=gtr", "method/steps=disa")
    build_method(cfg.method)
    assert "caps timesteps at 950" in caplog.text


def test_a_slot_without_target_is_refused():
    cfg = cfg_of("method=mar")
    cfg.method.order = {"num_stages": 3}
    with pytest.raises(ConfigError, match="slot 'order' has no _target_"):
        build_method(cfg.method)


def test_missing_checkpoint_advice_fits_the_cause(tmp_path):
    cfg = cfg_of("model=tiny", f"checkpoint={tmp_path / 'nope.pth'}")  # a path typed wrong: check it
    with pytest.raises(ConfigError, match="does not exist \\(check the path\\)") as e:
        build_model(cfg.model, checkpoint=cfg.checkpoint)
    assert "train.py" not in str(e.value) and "model.random_init=true" in str(e.value)
    cfg = cfg_of("model=tiny", f"model.checkpoint={tmp_path / 'nope.pth'}")  # the model's own file: train it
    with pytest.raises(ConfigError, match="(?s)does not exist.*scripts/train.py.*model.random_init=true"):
        build_model(cfg.model)


# ---------------------------------------------------------------- every method samples
FAST_STEPS = {  # few diffusion steps per slot class, so that 20 methods sample in seconds
    "gtr.method.ConstantSteps": {"num_steps": 3},
    "gtr.gtr.StageSteps": {"t_max": 3, "t_min": 2, "t_rec": 2, "t_detail": 3},
    "baselines.disa.DiSASteps": {"upper": 3, "lower": 1},
    "baselines.recap.ReCAPSteps": {"full_steps": 3, "local_steps": 2},
}


@pytest.fixture(scope="module")
def tiny_model():
    return build_model(cfg_of("model=tiny", "model.random_init=true").model)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_samples_and_fills_each_position_once(method, tiny_model):
    cfg = cfg_of("model=tiny", "model.random_init=true", f"method={method}")
    for key, value in FAST_STEPS[cfg.method.steps._target_].items():
        cfg.method.steps[key] = value
    if cfg.method.counts._target_ in ("gtr.method.CosineCounts", "baselines.halton.HaltonCounts"):
        cfg.method.num_iter = min(cfg.method.num_iter, 8)
    if cfg.method.cache._target_ == "baselines.lazymar.LazyMAR":
        cfg.method.num_iter = 12  # past LazyMAR's 5 full steps, so that lazy steps run too
    if cfg.method.cache._target_ == "baselines.cspd.DraftCache":
        cfg.method.draft = "tiny"  # a draft of the target's token grid (random too: model.random_init)
    built = build_method(cfg.method, grid=(8, 8))
    predicted = []
    tokens = sample(tiny_model, built, torch.tensor([2, 7]), [image_generator(0, i) for i in range(2)], cfg=2.0,
                    callback=lambda info: predicted.append(info["step"].predict.cpu()))
    filled = torch.cat(predicted, dim=1)  # (2, 64) positions in the order they were predicted
    assert filled.shape == (2, 64)
    for row in filled:
        assert sorted(row.tolist()) == list(range(64)), f"{method}: a position is filled twice or never"
    assert [p.shape[1] for p in predicted] == built.counts((8, 8))
    assert torch.isfinite(tokens).all() and (tokens.abs().sum(-1) > 0).all()  # every token written


@pytest.mark.parametrize("method", METHODS)
def test_every_method_samples_a_bf16_cast_model_on_either_engine(method, tiny_model):
    """precision=cast dtype=bf16 with every method (its caches, heads and hooks meet bf16 activations and
    fp32 tokens), on the reference and the fast engine."""
    cfg = cfg_of("model=tiny", "model.random_init=true", f"method={method}")
    for key, value in FAST_STEPS[cfg.method.steps._target_].items():
        cfg.method.steps[key] = value
    cfg.method.num_iter = 12 if cfg.method.cache._target_ == "baselines.lazymar.LazyMAR" else min(cfg.method.get("num_iter", 8), 8)
    if cfg.method.cache._target_ == "baselines.cspd.DraftCache":
        cfg.method.draft = "tiny"
    model = copy.deepcopy(tiny_model).to(torch.bfloat16)
    for engine in ("reference", "fast"):
        tokens = sample(model, build_method(cfg.method, grid=(8, 8)), torch.tensor([2, 7]),
                        [image_generator(0, i) for i in range(2)], cfg=2.0, head_loop=prepare(model, engine))
        assert tokens.dtype == torch.float32 and torch.isfinite(tokens).all(), f"{method} on {engine}"


# ---------------------------------------------------------------- experiments
PAPER_KEYS = {n: set(pd.read_csv(ROOT / "results" / "paper" / f"table{n}.csv")["key"]) for n in range(1, 6)}


def sweep_params(experiment):
    cfg = cfg_of(f"experiment={experiment}", hydra_node=True)
    return cfg, {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}


def test_table1_rows_compose_to_paper_keys():
    cfg, params = sweep_params("table1")
    assert cfg.hydra.mode == RunMode.MULTIRUN and cfg.eval.name == "fid50k"
    assert params["model"] == ["mar_b", "mar_l", "mar_h"] and params["+experiment/table1"] == ["glob(*)"]
    rows = compose(["experiment=table1", "model=mar_h"])  # the registry's expansion of the sweep
    assert len(rows) == 15
    keys = set()
    for c in rows:
        assert c.table == 1 and c.model.key == "mar_h" and c.baseline == "mar_h/64/mar" and c.group
        keys.add(c.key)
        build_method(c.method, grid=(16, 16))
    ours_only = {"mar_h/step32/gtr", "mar_h/step16/disa-it16", "mar_h/step8/disa-it8", "mar_h/64/lazymar"}
    assert keys == {k for k in PAPER_KEYS[1] if k.startswith("mar_h/")} | ours_only
    assert {c.key: c.compare_with for c in rows if c.key in ours_only} == {
        "mar_h/step32/gtr": "mar_h/step16/gtr", "mar_h/step16/disa-it16": "mar_h/step16/disa",
        "mar_h/step8/disa-it8": "mar_h/step8/disa", "mar_h/64/lazymar": None}
    for model in params["model"]:  # the key follows the swept model
        assert cfg_of("experiment=table1", f"model={model}", "+experiment/table1=s8_gtr").key == f"{model}/step8/gtr"
    c = cfg_of("experiment=table1", "model=mar_h", "+experiment/table1=s16_disa")
    assert c.method.name == "disa" and c.method.num_iter == 24 and c.key == "mar_h/step16/disa"


@pytest.mark.parametrize("table", [3, 4, 5])
def test_single_model_tables_compose_to_paper_keys(table):
    cfg, params = sweep_params(f"table{table}")
    assert cfg.model.key == "mar_h" and cfg.hydra.mode == RunMode.MULTIRUN
    keys = set()
    for method in params["method"]:
        c = cfg_of(f"experiment=table{table}", f"method={method}")
        assert c.table == table and c.key is not None, f"table{table}: no key for method {method}"
        keys.add(c.key)
        if c.method.counts._target_ == "gtr.gtr.StageCounts":
            assert list(c.method.counts.steps) == [16, 3, 1]  # the Table 1 "Step=16" GtR budget
        build_method(c.method, grid=(16, 16))
    paper = PAPER_KEYS[table] - ({"table3/none"} if table == 3 else set())  # "none": no config identified
    assert keys - {"mar_h/64/mar"} == paper - {"mar_h/64/mar"}


def test_table2_rows_compose_to_paper_keys():
    cfg, params = sweep_params("table2")
    assert cfg.model.key == "lightgen" and cfg.eval.name == "geneval" and cfg.hydra.mode == RunMode.MULTIRUN
    assert cfg.eval.samples_per_prompt == 4 and cfg.cfg == 4.0 and cfg.cfg_schedule == "constant"
    assert cfg.dtype == "fp16"  # the official GenEval script samples under torch.cuda.amp.autocast()
    rows = sorted(p.stem for p in (CONFIGS / "experiment" / "table2").glob("*.yaml"))
    keys, steps = set(), {}
    for row in rows:
        c = cfg_of("experiment=table2", f"+experiment/table2={row}")
        assert c.table == 2
        keys.add(c.key)
        method = build_method(c.method, grid=(32, 32))
        steps[c.key] = len(method.counts((32, 32)))
        if c.method.steps._target_ == "gtr.method.ConstantSteps":
            assert c.method.diffusion_steps == 50  # the paper: LightGen with 50 diffusion steps
    assert keys == {k for k in PAPER_KEYS[2] if k.startswith("lightgen/")}
    assert steps == {"lightgen/32/lightgen": 32, "lightgen/step16/lightgen": 16, "lightgen/step16/lazymar": 16,
                     "lightgen/step16/gtr": 16, "lightgen/step12/lightgen": 12, "lightgen/step12/lazymar": 12,
                     "lightgen/step12/gtr": 12}
    # The paper's rates on 32x32 with K=4: 8 + 3 + 3 + 2 AR steps.
    gtr16 = build_method(cfg_of("experiment=table2", "+experiment/table2=s16_gtr").method, grid=(32, 32))
    assert gtr16.counts.stage_steps((32, 32)) == [8, 3, 3, 2]


def test_demo_experiment():
    rows = compose(["experiment=demo"])
    assert len(rows) == len(list((CONFIGS / "experiment" / "demo").glob("*.yaml"))) == 21
    for c in rows:
        assert c.model.key == "tiny" and c.table == "demo" and c.key.startswith("tiny/") and c.n == 300
        assert c.baseline == "tiny/mar16" and build_method(c.method).steps.clip_timesteps == 950
    assert {c.key for c in rows if 5 in c.demo_tables} == {"tiny/gtr", "tiny/raster", "tiny/subsample", "tiny/random",
                                                           "tiny/gtr_enc"}


def test_evidence_run_rows():
    """make bench-tiny: the demo's rows at 1000 images plus one row per sweep file, into one folder; the
    claims (configs/claims.yaml) name demo rows only, so `make demo` can test them too."""
    demo = compose(["experiment=bench_tiny"])
    sweeps = compose(["experiment=bench_tiny_sweeps"])
    assert len(demo) == 21 and len(sweeps) == len(list((CONFIGS / "experiment" / "sweep").glob("*.yaml")))
    for c in demo + sweeps:
        assert c.n == 1000 and c.demo.out == "bench_tiny" and c.model.key == "tiny" and c.key.startswith("tiny/")
    assert all(c.sweep for c in sweeps) and len({c.key for c in demo + sweeps}) == len(demo) + len(sweeps)
    assert {c.key: settings_hash(c) for c in compose(["experiment=demo"])} != {c.key: settings_hash(c) for c in demo}
    from eval.claims import load_claims
    named = {row for claim in load_claims().values() for test in claim["tests"] for row in test[::2]}
    assert {f"tiny/{row}" for row in named} <= {c.key for c in demo}


def test_run_folder_encodes_the_settings():
    base = cfg_of("model=mar_b", "method=gtr")
    assert base.run_name.startswith("mar_b/gtr-K3_cfg2.9_seed0_preview_")
    assert settings_hash(cfg_of("model=mar_b", "method=gtr", "method.stages=2")) != settings_hash(base)
    assert settings_hash(cfg_of("model=mar_b", "method=gtr", "method.steps.beta=0.2")) != settings_hash(base)
    assert settings_hash(cfg_of("model=mar_b", "method=gtr", "n=8")) != settings_hash(base)
    # batch size and shard size change no image: same folder, so a run can resume with another batch size
    assert settings_hash(cfg_of("model=mar_b", "method=gtr", "batch_size=3", "shard_size=5")) == settings_hash(base)


# ---------------------------------------------------------------- the sweep, through hydra.main
def test_sweep_smoke(tmp_path):
    """`-m method.stages=2,3` through scripts/sample.py's hydra.main, in this process (hydra's basic
    launcher runs the jobs one after the other): two run folders, each complete."""
    spec = importlib.util.spec_from_file_location("sample_script", ROOT / "scripts" / "sample.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = sys.argv
    sys.argv = ["sample.py", "-m", "model=tiny", "model.random_init=true", "method=gtr", "method.stages=2,3", "n=2",
                "device=cpu", "threads=1", "method.steps.t_max=2", "method.steps.t_min=1", "method.steps.t_rec=1",
                "method.steps.t_detail=2", f"out_root={tmp_path}", "hydra.job_logging.root.level=WARNING"]
    GlobalHydra.instance().clear()
    try:
        script.cli()
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    runs = sorted(tmp_path.glob("tiny/gtr-K*/run.json"))
    assert [p.parent.name.split("_")[0] for p in runs] == ["gtr-K2", "gtr-K3"]
    for path, stages in zip(runs, (2, 3)):
        record = json.loads(path.read_text())
        assert record["status"] == "done" and record["config"]["method"]["order"]["num_stages"] == stages
        assert (path.parent / "samples.npz").is_file() and (path.parent / "grid.png").is_file()
