"""From a method config (configs/method/*.yaml) to a gtr.method.Method.

    method = build_method(cfg.method, grid=(16, 16))   # one slot object per configs/method/<slot>/*.yaml

Every problem a user can cause (an unknown slot class, a parameter a slot does not take, slots that do
not fit together or not on the model's grid) raises ConfigError with a sentence saying what to change;
scripts print it without a traceback. Models: gtr/load.py; run identity: gtr/runs.py.
"""
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from gtr.config import ConfigError
from gtr.method import Method

SLOTS = ("order", "counts", "steps", "cache")


# ---------------------------------------------------------------- methods
def build_method(cfg_method, grid=None):
    """A gtr.method.Method from a method config (configs/method/*.yaml).

    Each slot node (`order`, `counts`, `steps`, `cache`) is instantiated with hydra from its
    `_target_`. `grid` (h, w), when given, dry-runs the order and the counts on that grid, so a
    method that cannot fill it (too many stages, more steps than tokens) fails here, before any model
    work. A slot with a `check(method)` hook judges the combination: it refuses with ValueError or logs.
    """
    if not isinstance(cfg_method, DictConfig) or any(s not in cfg_method for s in SLOTS):
        raise ConfigError(f"a method config needs the slots {SLOTS} (see configs/method/mar.yaml); "
                          f"got {None if cfg_method is None else list(cfg_method)}")
    name = cfg_method.get("name", "custom")
    slots = {}
    hooks = SLOTS + (("verify",) if cfg_method.get("verify") is not None else ())  # speculative methods only
    for slot in hooks:
        node = cfg_method[slot]
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if not target:
            raise ConfigError(f"method {name!r}: slot {slot!r} has no _target_ (pick one of configs/method/{slot}/)")
        try:
            slots[slot] = instantiate(node, _convert_="all")
        except InstantiationException as e:
            cause = _cause(e)
            if "unexpected keyword argument" in cause:
                cause += (f" (the method's yaml sets it for another {slot} slot: drop it with ~method.{slot}.<name>, "
                          f"or see configs/method/{slot}/ for what {target.rsplit('.', 1)[-1]} takes)")
            raise ConfigError(f"method {name!r}: cannot build its {slot} slot {target}: {cause}") from None
        except Exception as e:  # an interpolation to a missing knob, a bad value
            raise ConfigError(f"method {name!r}: cannot build its {slot} slot {target}: {type(e).__name__}: {e}") from None
    method = Method(slots["order"], slots["counts"], slots["steps"], slots["cache"], name, slots.get("verify"))
    for slot in hooks:  # a slot's own check of the combination (e.g. GtR's stage counts vs its order)
        check = getattr(slots[slot], "check", None)
        if check is not None:
            try:
                check(method)
            except ValueError as e:
                raise ConfigError(f"method {name!r}: {e}") from None
    if grid is not None:
        dry_run(method, grid)
    return method


def _cause(error):
    """The useful part of hydra's InstantiationException (the underlying error, without the wrapper)."""
    cause = error.__cause__ or error
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text}" if cause is not error else text


def dry_run(method, grid):
    """Run the order and counts slots once on `grid`; ConfigError if they cannot fill it."""
    h, w = grid
    try:
        counts = [int(c) for c in method.counts(grid)]
        order = method.order(grid, torch.Generator().manual_seed(0))
    except ValueError as e:
        raise ConfigError(f"method {method.name!r} does not fit the model's {h}x{w} token grid: {e}") from None
    if any(c < 0 for c in counts) or sum(counts) != h * w:
        raise ConfigError(f"method {method.name!r}: its counts {counts} do not sum to the {h * w} tokens of the grid")
    if sorted(torch.as_tensor(order).tolist()) != list(range(h * w)):
        raise ConfigError(f"method {method.name!r}: its order is not a permutation of the {h * w} grid positions")
    for slot in (method.cache, method.verify):  # a slot with a model of its own (a draft) checks its grid
        check_grid = getattr(slot, "check_grid", None)
        if check_grid is not None:
            try:
                check_grid(grid)
            except ValueError as e:
                raise ConfigError(f"method {method.name!r}: {e}") from None
    return counts
