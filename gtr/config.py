"""The one registry: Hydra configs (configs/) composed for every entry point, and checked before any work.

    rows = compose(["experiment=table1", "model=mar_b"])   # one config per row of the experiment
    rows = compose(["model=tiny", "method=gtr"])           # one config
    rows = compose(["method.stages=2,3"], multirun=True)   # a sweep, as `-m` expands it
    check_values(cfg)                                       # every CLI knob, one clear line per problem

Every script (sample, flops, latency, demo, evaluate, tables, reproduce) takes the same overrides as
`scripts/sample.py`; an experiment (configs/experiment/*.yaml) is a list of rows written as Hydra's
sweeper params, expanded here exactly as Hydra's basic sweeper expands them (command-line values win
over the experiment's). A problem a user can type is a ConfigError with one sentence saying what to
change; scripts print it without a traceback.
"""
import logging
import math
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("model", "method", "eval", "experiment")   # the choices a user names on the command line
DTYPES = ("fp32", "bf16", "fp16")
ENGINES = ("reference", "fast", "graphs")  # gtr/engine.py
PRECISIONS = ("autocast", "cast")
log = logging.getLogger("gtr")


class ConfigError(ValueError):
    """A configuration that cannot run, with the reason and the fix in words."""


def options(group):
    """The choices of a config group (configs/<group>/*.yaml), sorted."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def register_resolvers():
    """`${gtr_hash:}` (configs/sample.yaml's run_name): the short hash of every setting that changes an
    image (gtr.runs.settings_hash). Scripts call this before Hydra composes anything."""
    if OmegaConf.has_resolver("gtr_hash"):
        return

    def settings_hash(*, _root_):
        from gtr.runs import settings_hash
        try:
            return settings_hash(_root_)
        except Exception:  # a bad value (n=abc): the run folder gets a name, check_values refuses the run
            return "invalid"
    OmegaConf.register_new_resolver("gtr_hash", settings_hash)


def split_argv(argv):
    """(overrides, multirun) from a command line: Hydra's key=value overrides and whether -m was given.
    Other flags (--cfg job, --help) are Hydra's own: None for the overrides then (nothing to check)."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    flags = [a for a in argv if a.startswith("-") and a not in ("-m", "--multirun")]
    return (None if flags else [a for a in argv if not a.startswith("-")]), multirun


def _one_line(error):
    """A Hydra error's message as one line (its text up to the first blank line)."""
    text = str(error).strip().split("\n\n")[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def check_choices(parsed):
    """Refuse a config choice that does not exist (method=nope) before Hydra lists its search path."""
    for o in parsed:
        group = o.key_or_group
        if o.is_delete() or not (CONFIG_DIR / group).is_dir():
            continue
        if o.is_sweep_override() and not o.is_discrete_sweep():
            continue  # glob(...) / range(...): Hydra resolves them against the existing files
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        for value in values:
            if value != "null" and not (CONFIG_DIR / group / f"{value}.yaml").is_file():
                raise ConfigError(f"unknown {group} {value!r}; choose one of: {', '.join(options(group))}")


def compose(overrides=(), multirun=False, config_name="sample"):
    """The configs that these overrides describe: one, or (with `multirun`, or an experiment that sets
    hydra.mode: MULTIRUN) one per job of the sweep, in Hydra's order; `experiment=a,b` gives a's rows,
    then b's. ConfigError for anything Hydra refuses, in one line."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the sweeper `-m` uses
    register_resolvers()
    overrides = list(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
            parsed = parser.parse_overrides(overrides)
            check_choices(parsed)
            several = [o for o in parsed if o.key_or_group == "experiment" and o.is_sweep_override()]
            if several:  # experiment=table1,table3: each experiment with its own rows, one after the other
                rest = [o.input_line for o in parsed if o is not several[0]]
                values = list(several[0].sweep_string_iterator())
                GlobalHydra.instance().clear()
                return [row for v in values for row in compose([*rest, f"experiment={v}"], multirun, config_name)]
            fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
            base = hydra_compose(config_name, overrides=fixed, return_hydra_config=True)
            sweeping = multirun or str(base.hydra.get("mode")) in ("MULTIRUN", "RunMode.MULTIRUN")
            if not sweeping:
                if len(fixed) < len(parsed):
                    raise ConfigError("a comma list or range in an override is a sweep: add -m to run each value")
                jobs = [fixed]
            else:
                params = [f"{k}={v}" for k, v in (base.hydra.sweeper.get("params") or {}).items()]
                jobs = BasicSweeper.split_arguments(parser.parse_overrides(params + overrides), None)[0]
            return [hydra_compose(config_name, overrides=list(job)) for job in jobs]
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()


# ---------------------------------------------------------------- values a user types
def _is_int(value, low=None):
    return not isinstance(value, bool) and isinstance(value, int) and (low is None or value >= low)


def _is_number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_values(cfg):
    """Refuse a bad value of a plain knob with one sentence (before any model is built).

    n, seed, cfg, cfg_schedule, temperature, batch_size, shard_size, engine, dtype, precision, device, threads, tf32,
    labels' form, rank, world_size, grid_images, the eval set's size and latency's batch_size, batches and
    warmup; class ranges, grids and prompt files are checked by gtr.runs.check_run with the model's shape.
    """
    def need(ok, text):
        if not ok:
            raise ConfigError(text)
    n = cfg.get("n")
    need(n is None or _is_int(n, 1), f"n must be a positive number of images, got {n!r}")
    need(_is_int(cfg.seed, 0), f"seed must be a non-negative integer, got {cfg.seed!r}")
    need(_is_number(cfg.cfg) and cfg.cfg >= 0, f"cfg (guidance scale) must be a number >= 0, got {cfg.cfg!r} "
         "(1: no guidance; between 0 and 1: towards the unconditional model)")
    need(cfg.cfg_schedule in ("linear", "linear_exact", "constant"),
         f"cfg_schedule must be linear, linear_exact or constant, got {cfg.cfg_schedule!r}")
    need(_is_number(cfg.temperature) and cfg.temperature >= 0,
         f"temperature must be a number >= 0 (0: no noise after the first draw), got {cfg.temperature!r}")
    for knob in ("batch_size", "shard_size"):
        need(_is_int(cfg[knob], 1), f"{knob} must be a positive integer, got {cfg[knob]!r}")
    need(cfg.get("engine", "reference") in ENGINES,
         f"engine must be one of {', '.join(ENGINES)}, got {cfg.get('engine')!r}")
    need(cfg.get("precision", "autocast") in PRECISIONS,
         f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.get('precision')!r}")
    need(cfg.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    device = str(cfg.device)
    need(device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()),
         f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    if cfg.get("engine") == "graphs":
        import torch  # only here: composing configs needs no torch
        need(device != "cpu" and torch.cuda.is_available(),
             "engine=graphs replays CUDA graphs and needs a CUDA GPU (device=cuda); on the CPU use engine=fast, "
             "the same arithmetic")
    need(cfg.threads is None or _is_int(cfg.threads, 1), f"threads must be null or a positive integer, got {cfg.threads!r}")
    need(isinstance(cfg.tf32, bool), f"tf32 must be true or false, got {cfg.tf32!r}")
    for knob in ("rank", "world_size"):
        need(cfg[knob] is None or _is_int(cfg[knob], 0), f"{knob} must be null or an integer >= 0, got {cfg[knob]!r}")
    need(_is_int(cfg.grid_images, 0), f"grid_images must be an integer >= 0, got {cfg.grid_images!r}")
    labels = cfg.get("labels")
    need(labels is None or (isinstance(labels, (list, ListConfig)) and len(labels) > 0
                            and all(_is_int(v, 0) for v in labels)),
         f"labels must be a list of class ids like [207,360], got {OmegaConf.to_container(labels) if isinstance(labels, ListConfig) else labels!r}")
    size = cfg.eval.get("num_images")
    need(size is None or _is_int(size, 1), f"eval.num_images must be a positive integer, got {size!r}")
    latency = cfg.get("latency") or {}
    for knob, low in (("batch_size", 1), ("batches", 1), ("warmup", 0)):
        value = latency.get(knob, low)
        need(_is_int(value, low), f"latency.{knob} must be an integer >= {low}, got {value!r}")
    if 0 <= cfg.cfg < 1:
        log.warning("cfg=%s < 1: guidance towards the unconditional model (1 is no guidance)", cfg.cfg)


def plain(node):
    """A config node as plain data ({} when unset)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else (node or {})
