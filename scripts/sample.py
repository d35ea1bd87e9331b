"""Generate images with a MAR model and a sampling method (Hydra entry point; configs/sample.yaml).

    python scripts/sample.py model=mar_b method=gtr checkpoint=PATH n=16 seed=0
    python scripts/sample.py model=tiny method=gtr model.random_init=true n=8 device=cpu   # CPU smoke run
    python scripts/sample.py model=mar_h method=gtr eval=fid50k                             # FID-50K set
    torchrun --nproc_per_node=8 scripts/sample.py model=mar_h method=gtr eval=fid50k        # 8 GPUs
    python scripts/sample.py -m model=mar_b method=gtr method.stages=2,3,4                  # a sweep
    python scripts/sample.py method=gtr method/cache=lazymar                                # combine slots
    python scripts/sample.py experiment=table1                                              # a paper table
    python scripts/sample.py --cfg job                                                      # print the config
    python scripts/sample.py model=lightgen eval=geneval checkpoint=PATH eval.prompts=P     # text-to-image

Images: n images (eval.num_images or `n`); image i has label labels[i] (the eval protocol: class-major
np.arange(classes).repeat(n // classes), MAR's; or spread over the classes when n is not a multiple)
and is drawn from gtr.sampler.image_generator(seed, i), so it is the same however the run is sharded,
ranked or restarted (bit for bit at one batch size; another batch size changes float rounding only). Text-to-image (a prompts eval set: eval=geneval, eval=prompts): image i
shows prompt i // eval.samples_per_prompt, its "label" is that prompt index, and the T5 states of the
prompts are computed per batch (gtr/prompts.py text_conditions).

Shards: images [s * shard_size, (s + 1) * shard_size) form shard s; with W processes (torchrun's RANK and
WORLD_SIZE, or rank=/world_size=) rank r makes the shards s with s % W == r (strided, so ranks finish
together). A shard is done when shards/shard_SSSSSS.npz exists: it is written atomically after its PNGs,
so a killed run, started again with the same command, skips finished shards and redoes only the one it
was making. Rank 0 assembles samples.npz once every shard exists: under torchrun it waits for the
others; with ranks started by hand, run rank 0 last (or again).

Outputs, in outputs/<model>/<method>_cfg.._seed.._<eval>_<hash>/ (the hash covers every setting that
changes an image, gtr/runs.py image_settings): images/NNNNNN.png, shards/, samples.npz (ADM layout: uint8
NHWC `arr_0` in index order, plus `labels`), grid.png (captioned), run.json (resolved config, provenance,
and every attempt: sessions/), and Hydra's .hydra/ and sample.log. Every value is checked before any
work: a refused command prints one line and leaves no folder. FID/IS: python -m eval.fid RUN/samples.npz --ref-stats STATS.npz
"""
import json
import math
import os
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from tqdm import tqdm

from gtr.config import ConfigError, check_values, compose, register_resolvers, split_argv
from gtr.images import save_grid, save_png
from gtr.load import build_model, decoder, describe_weights, model_on_meta
from gtr.prompts import is_prompt_eval, text_conditions
from gtr.runs import (check_run, device_name, generate, git_commit, image_settings, make_labels, num_images,
                      pick_device, precision, settings_hash)

ROOT = Path(__file__).resolve().parents[1]
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip entry time: the same npz bytes for the same images


# ---------------------------------------------------------------- what to make
def shard_range(s, shard_size, n):
    return range(s * shard_size, min(n, (s + 1) * shard_size))


def shard_path(out, s):
    return out / "shards" / f"shard_{s:06d}.npz"


def rank_and_world(cfg):
    """(rank, world size): the config's, else torchrun's RANK / WORLD_SIZE, else (0, 1)."""
    rank = cfg.rank if cfg.rank is not None else int(os.environ.get("RANK", 0))
    world = cfg.world_size if cfg.world_size is not None else int(os.environ.get("WORLD_SIZE", 1))
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is not in [0, world_size={world})")
    return rank, world


# ---------------------------------------------------------------- files
def save_atomic(path, write):
    """write(tmp_path) then rename: a reader never sees a half-written file (the temporary name is per
    process: ranks may write the same file, e.g. shards/meta.json)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_shard(out, s, indices, labels, images, tokens=None):
    arrays = {"indices": np.asarray(indices, dtype=np.int64), "labels": labels, "images": images}
    if tokens is not None:
        arrays["tokens"] = tokens

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    save_atomic(shard_path(out, s), write)


def shard_done(out, s, indices, labels):
    """Whether shard s is finished: its file exists and reads back (only its small arrays are read).
    A shard of other indices or labels means the folder belongs to another run: refused."""
    path = shard_path(out, s)
    if not path.is_file():
        return False
    try:
        with np.load(path) as d:
            same = np.array_equal(d["indices"], indices) and np.array_equal(d["labels"], labels)
    except Exception:
        return False  # unreadable: made again
    if not same:
        raise ConfigError(f"{path} holds other images than this run would make (indices or labels differ); "
                          "delete the folder or choose another one")
    return True


def write_npz(path, shards, shape, labels):
    """samples.npz streamed shard by shard (the 50K set does not fit in memory twice): `arr_0` uint8 NHWC
    in index order and `labels`, stored uncompressed like np.savez, with fixed entry times."""
    def write(tmp):
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open(zipfile.ZipInfo("arr_0.npy", FIXED_TIME), "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
                for images in shards():
                    f.write(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
            with zf.open(zipfile.ZipInfo("labels.npy", FIXED_TIME), "w") as f:
                np.lib.format.write_array(f, np.asarray(labels, dtype=np.int64))
    save_atomic(path, write)


# ---------------------------------------------------------------- provenance
def write_session(out, session):
    """This invocation's record (images made, seconds), rewritten after every shard, so a killed attempt
    keeps what it made: sessions/<start>_rank<r>_<pid>.json."""
    path = out / "sessions" / session["file"]
    path.parent.mkdir(exist_ok=True)
    save_atomic(path, lambda tmp: tmp.write_text(json.dumps(session, indent=1) + "\n"))


def write_run_json(out, cfg, device, world, status, weights):
    """run.json: the resolved config and provenance; `sessions` lists every attempt of every rank (a
    resumed run has several), each with the images it made and how long it took; `weights` names the
    checkpoint and VAE files (URL, entry, sha256)."""
    # started_unix orders attempts that share a "started" second (a run killed in its first second and its
    # resumption); records made before it had only "started"
    sessions = sorted((json.loads(p.read_text()) for p in (out / "sessions").glob("*.json")),
                      key=lambda r: (r.get("started_unix", 0), r["started"], r["rank"]))
    record = {
        "status": status, "table": cfg.table, "key": cfg.key, "model": cfg.model.key, "method": cfg.method.name,
        "num_images": num_images(cfg), "seed": cfg.seed, "batch_size": cfg.batch_size, "world_size": world,
        "device": device_name(device), "engine": cfg.engine, "dtype": cfg.dtype, "precision": cfg.precision, "tf32": cfg.tf32,
        "torch_version": torch.__version__, "git_commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "settings_hash": settings_hash(cfg),
        "out_dir": str(out), "images_made": sum(r["images"] for r in sessions),
        "seconds": round(sum(r["seconds"] for r in sessions), 3), "sessions": sessions, "weights": weights,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    save_atomic(out / "run.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2, default=str) + "\n"))


def start_wandb(cfg, out):
    """A wandb run (offline unless WANDB_MODE says otherwise), or None when wandb.enabled is false."""
    if not cfg.wandb.enabled:
        return None
    os.environ.setdefault("WANDB_MODE", cfg.wandb.mode)
    try:
        import wandb
    except ImportError:
        raise ConfigError("wandb.enabled=true but wandb is not installed (pip install wandb)") from None
    run_id = f"{cfg.model.key}-{cfg.method.name}-{settings_hash(cfg)}"
    return wandb.init(project=cfg.wandb.project, name=cfg.run_name, id=run_id, resume="allow", dir=str(out),
                      config=OmegaConf.to_container(cfg, resolve=True))


# ---------------------------------------------------------------- the run
def check_meta(out, cfg, shard_size, device):
    """Record what the shards in `out` are made with; refuse to resume a folder made otherwise."""
    meta = {"settings": image_settings(cfg), "shard_size": shard_size, "device_type": device.type}
    meta = json.loads(json.dumps(meta, default=str))
    path = out / "shards" / "meta.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != meta:
            diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise ConfigError(f"{out} holds shards made with other {', '.join(diff)} ({path}); resume with the "
                              "same settings, or delete the folder / choose another one (hydra.run.dir=...)")
        return
    save_atomic(path, lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))


def setup(cfg):
    """Prepare the device: (rank, world, device). The values were checked (gtr.runs.check_run)."""
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    rank, world = rank_and_world(cfg)
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = bool(cfg.tf32)
        torch.backends.cudnn.allow_tf32 = bool(cfg.tf32)
    return rank, world, device


def wait_for_shards(out, num_shards, launched_together):
    """Rank 0's wait for the other ranks' shards: polled when they run now (torchrun), else None if missing."""
    while True:
        missing = [s for s in range(num_shards) if not shard_path(out, s).is_file()]
        if not missing or not launched_together:
            return not missing
        time.sleep(5)


def assemble(cfg, out, num_shards, n, labels):
    """samples.npz (all images in index order) and grid.png (captioned), from the shards."""
    def shards():
        for s in range(num_shards):
            with np.load(shard_path(out, s)) as d:
                yield d["images"]
    write_npz(out / "samples.npz", shards, (n, *next(shards()).shape[1:]), labels)
    grid = []
    for images in shards():  # the first grid_images images: a few shards at most
        grid.append(images)
        if sum(map(len, grid)) >= cfg.grid_images:
            break
    shown = np.concatenate(grid)[:cfg.grid_images]
    if len(shown):
        columns = math.ceil(math.sqrt(len(shown)))
        caption = (f"{cfg.model.key} {cfg.method.tag} cfg {cfg.cfg} seed {cfg.seed}: images 0-{len(shown) - 1}, "
                   f"{columns} a row; {'prompt' if is_prompt_eval(cfg.eval) else 'class'} of each: "
                   + " ".join(str(v) for v in labels[:len(shown)]))
        width = columns * (shown.shape[2] + 2) // 6  # characters a line: the caption font is ~6 px wide
        save_grid(shown, out / "grid.png", columns, "\n".join(textwrap.wrap(caption, max(20, width))))


def run(cfg, out):
    """Make (or finish) the run of `cfg` in the folder `out`. Every check comes before any weights load."""
    method = check_run(cfg, model_on_meta(cfg.model))
    rank, world, device = setup(cfg)
    model = build_model(cfg.model, device, checkpoint=cfg.checkpoint, dtype=precision(cfg)[0])
    weights = describe_weights(cfg.model, cfg.checkpoint)  # file, URL, entry and sha256 of what was loaded
    n, shard_size = num_images(cfg), int(cfg.shard_size)
    if is_prompt_eval(cfg.eval):  # text-to-image: "labels" are prompt indices (image i: prompt i // per prompt)
        labels, condition = text_conditions(cfg, model, device, n)
    else:
        labels = make_labels(n, model.config.class_num, cfg.eval.get("balanced", False), cfg.labels, cfg.eval.name)
        condition = torch.as_tensor
    decode = decoder(cfg.model, model, device)

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "shards").mkdir(exist_ok=True)
    check_meta(out, cfg, shard_size, device)
    num_shards = math.ceil(n / shard_size)
    mine = [s for s in range(num_shards) if s % world == rank]  # strided: ranks finish together
    todo = [s for s in mine if not shard_done(out, s, np.array(shard_range(s, shard_size, n)),
                                              labels[shard_range(s, shard_size, n)])]
    print(f"{out}\n{n} images in {num_shards} shards; rank {rank}/{world}: {len(mine)} shards, "
          f"{len(mine) - len(todo)} already done", flush=True)

    start = time.time()
    session = {"file": f"{time.strftime('%Y%m%dT%H%M%S', time.localtime(start))}_rank{rank}_{os.getpid()}.json",
               "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start)), "started_unix": start, "rank": rank,
               "images": 0, "seconds": 0.0, "device": device_name(device), "batch_size": int(cfg.batch_size),
               "world_size": world, "git_commit": git_commit()}
    if todo:
        write_session(out, session)
    if rank == 0:
        write_run_json(out, cfg, device, world, "running", weights)
    wb = start_wandb(cfg, out) if rank == 0 else None
    total = sum(len(shard_range(s, shard_size, n)) for s in todo)
    with tqdm(total=total, unit="img", desc=f"{cfg.model.key} {cfg.method.name}", disable=rank != 0) as bar:
        for s in todo:
            indices = list(shard_range(s, shard_size, n))
            images, tokens = generate(cfg, model, method, decode, labels, indices, bar.update, condition)
            if cfg.save_png:
                for i, image in zip(indices, images):
                    save_png(image, out / "images" / f"{i:06d}.png")
            write_shard(out, s, indices, labels[indices], images, tokens)  # last: marks the shard done
            session.update(images=session["images"] + len(indices), seconds=round(time.time() - start, 3))
            write_session(out, session)
            if rank == 0:
                write_run_json(out, cfg, device, world, "running", weights)
            if wb is not None:
                wb.log({"images": session["images"], "images_per_s": session["images"] / session["seconds"],
                        "shard": s})

    if rank != 0:
        print(f"rank {rank}: its shards are done; rank 0 assembles samples.npz", flush=True)
        return
    if not wait_for_shards(out, num_shards, launched_together=world > 1 and "TORCHELASTIC_RUN_ID" in os.environ):
        print("some shards are not done yet (other ranks still running?): run the same command again when they "
              "are, to assemble samples.npz", flush=True)
        return
    assemble(cfg, out, num_shards, n, labels)
    write_run_json(out, cfg, device, world, "done", weights)
    if wb is not None:
        import wandb
        wb.log({"grid": wandb.Image(str(out / "grid.png"))})
        wb.finish()
    print(f"wrote {out / 'samples.npz'} ({n} images), grid.png, run.json", flush=True)


def remove_new_folder(out, root):
    """Remove a run folder this refused invocation created (it holds only Hydra's files), and the empty
    folders above it up to `root`: a refused command leaves nothing behind."""
    import shutil
    if (out / "run.json").exists() or (out / "shards").exists() or not out.is_dir():
        return
    shutil.rmtree(out, ignore_errors=True)
    root = Path(root).resolve()
    parent = out.parent.resolve()
    while parent != root and root in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


@hydra.main(config_path=str(ROOT / "configs"), config_name="sample", version_base="1.3")
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        run(cfg, out)
    except ConfigError as e:
        remove_new_folder(out, cfg.out_root)
        sys.exit(f"error: {e}")


def cli():
    """The command line: every job it describes is composed and its values checked first (one line per
    problem, before Hydra makes a run folder), then Hydra runs it."""
    register_resolvers()
    overrides, multirun = split_argv(sys.argv[1:])
    if overrides is not None:
        try:
            for job in compose(overrides, multirun):
                check_values(job)
        except ConfigError as e:
            sys.exit(f"error: {e}")
    main()


if __name__ == "__main__":
    cli()
