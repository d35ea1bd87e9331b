"""Run records, the rows of our tables: built from the row's config by one function and written by one
function, which validates them against the schema (eval/tables.py) before anything reaches the disk.

    record = run_record(cfg, device="meta (FLOPs counted on CPU, no weights)", flops_T=...)
    write_record(out / "runs" / "flops", record)      # <key with / as __>.json, atomically
"""
import json
import os
import shlex
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from eval.tables import validate_record
from gtr.runs import git_commit, num_images, row_key


def command_line():
    """The command that is running, as a user would retype it."""
    args = [os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0] else "python"] + sys.argv[1:]
    return " ".join(["python"] + [shlex.quote(a) for a in args])  # quoted as a shell needs (e.g. ${cfg}, [2,1,1])


def run_record(cfg, device, batch_size=1, images=None, **measured):
    """A run record for the row `cfg` (a composed config): its table, key, names, family, group and
    resolved config, provenance, and the `measured` fields (flops_T, fid, latency_cpu_s, ...)."""
    method = cfg.method
    record = {
        "table": cfg.table if cfg.table is not None else "ours", "key": row_key(cfg),
        "model": cfg.model.get("label", cfg.model.key), "method": method.get("label", method.name),
        "family": method.get("family", method.name), "group": cfg.get("group"), "baseline": cfg.get("baseline"),
        "compare_with": cfg.get("compare_with") or cfg.key, "config": OmegaConf.to_container(cfg, resolve=True),
        "command": command_line(), "git_commit": git_commit(), "torch_version": torch.__version__,
        "device": device, "engine": cfg.get("engine", "reference"), "dtype": cfg.dtype,
        "precision": cfg.get("precision", "autocast"), "batch_size": int(batch_size),
        "num_images": int(images if images is not None else num_images(cfg)),
    }
    clash = sorted(set(measured) & set(record))
    if clash:  # a measurement must not overwrite what the run was (e.g. "precision", the dtype protocol)
        raise ValueError(f"measured field(s) {', '.join(clash)} would overwrite the record's own")
    record.update(measured)
    return record


def record_path(folder, key):
    """Where the record of `key` lives in `folder`: one file per key."""
    return Path(folder) / (key.replace("/", "__") + ".json")


def write_record(folder, record):
    """Validate `record` (eval.tables.validate_record) and write it atomically to its file in `folder`."""
    path = record_path(folder, record["key"])
    validate_record(record, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_records(folder):
    """Every record in `folder` (not recursive), by key."""
    return {r["key"]: r for r in (json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json")))}
