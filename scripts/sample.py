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
and is drawn from gtr.sampler.image_generator(seed, i), so it is the same whatever the batch size,
number of processes or restarts. Text-to-image (a prompts eval set: eval=geneval, eval=prompts): image i
shows prompt i // eval.samples_per_prompt, its "label" is that prompt index, and the T5 states of the
prompts are computed per batch (gtr/build.py text_conditions).

Shards: images [s * shard_size, (s + 1) * shard_size) form shard s; with W processes (torchrun's RANK and
WORLD_SIZE, or rank=/world_size=) rank r makes the shards s with s % W == r (strided, so ranks finish
together). A shard is done when shards/shard_SSSSSS.npz exists: it is written atomically after its PNGs,
so a killed run, started again with the same command, skips finished shards and redoes only the one it
was making. Rank 0 assembles samples.npz once every shard exists: under torchrun it waits for the
others; with ranks started by hand, run rank 0 last (or again).

Outputs, in outputs/<model>/<method>_cfg.._seed.._<eval>_<hash>/ (the hash covers every setting that
changes an image, gtr/build.py image_settings): images/NNNNNN.png, shards/, samples.npz (ADM layout: uint8
NHWC `arr_0` in index order, plus `labels`), grid.png, run.json (resolved config and provenance), and
Hydra's .hydra/ and sample.log. FID/IS: python -m eval.fid RUN/samples.npz --ref-stats STATS.npz
"""
import json
import math
import os
import platform
import sys
import time
import zipfile
from contextlib import nullcontext
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, uninstalled

from gtr.build import (ConfigError, build_method, build_model, decoder, git_commit, image_settings,  # noqa: E402
                       is_prompt_eval, num_images, prompt_file, read_prompt_texts, settings_hash,
                       text_conditions)
from gtr.sampler import image_generator, sample  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip entry time: the same npz bytes for the same images


# ---------------------------------------------------------------- what to make
def make_labels(n, num_classes, balanced, labels=None, eval_name="eval"):
    """Class label of every image index (n,).

    `labels` given: cycled over the images. Else, when n is a multiple of the classes, MAR's protocol:
    np.arange(classes).repeat(n // classes) (class-major: images 0..49 are class 0 for FID-50K); else,
    unless the eval set requires balance, labels spread evenly over the classes.
    """
    if n < 1:
        raise ConfigError(f"n must be a positive number of images, got {n}")
    if labels is not None:
        labels = np.asarray(list(labels), dtype=np.int64)
        if labels.size == 0 or labels.min() < 0 or labels.max() >= num_classes:
            raise ConfigError(f"labels must be class ids in [0, {num_classes}), got {labels.tolist()}")
        return labels[np.arange(n) % len(labels)]
    if n % num_classes == 0:
        return np.arange(num_classes, dtype=np.int64).repeat(n // num_classes)
    if balanced:
        raise ConfigError(f"eval={eval_name} needs the same number of images per class: n={n} is not a "
                          f"multiple of the {num_classes} classes (e.g. n={num_classes * max(1, n // num_classes)})")
    return np.linspace(0, num_classes - 1, n).astype(np.int64)


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


def pick_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu")
    return device


# ---------------------------------------------------------------- files
def save_atomic(path, write):
    """write(tmp_path) then rename: a reader never sees a half-written file (the temporary name is per
    process: ranks may write the same file, e.g. shards/meta.json)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_png(image, path):
    """uint8 (H, W, C) -> PNG (grey when C == 1)."""
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


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


def save_grid(images, path, pad=2):
    """The images (k, H, W, C) tiled in a near-square grid."""
    k, h, w, c = images.shape
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i, image in enumerate(images):
        y, x = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        grid[y:y + h, x:x + w] = image
    save_png(grid, path)


# ---------------------------------------------------------------- provenance
def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def write_run_json(out, cfg, device, world, status, session=None):
    """run.json: the resolved config and provenance; `sessions` lists every invocation (a resumed run has
    several), each with the images it made and how fast."""
    path = out / "run.json"
    sessions = json.loads(path.read_text()).get("sessions", []) if path.is_file() else []
    record = {
        "status": status, "table": cfg.table, "key": cfg.key, "model": cfg.model.key, "method": cfg.method.name,
        "num_images": num_images(cfg), "seed": cfg.seed, "batch_size": cfg.batch_size, "world_size": world,
        "device": device_name(device), "dtype": cfg.dtype, "tf32": cfg.tf32,
        "torch_version": torch.__version__, "git_commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "settings_hash": settings_hash(cfg),
        "out_dir": str(out), "sessions": sessions + ([session] if session else []),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    save_atomic(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2, default=str) + "\n"))


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
    """Check the plain settings and prepare the device: (rank, world, device)."""
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}")
    if int(cfg.batch_size) < 1 or int(cfg.shard_size) < 1:
        raise ConfigError(f"batch_size ({cfg.batch_size}) and shard_size ({cfg.shard_size}) must be positive")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    rank, world = rank_and_world(cfg)
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = bool(cfg.tf32)
        torch.backends.cudnn.allow_tf32 = bool(cfg.tf32)
    return rank, world, device


def make_shard(cfg, model, method, decode, labels, indices, progress, condition=torch.as_tensor):
    """Images (k, H, W, C) uint8 and, with eval.save_tokens, tokens (k, L, C) of the given image indices;
    progress(number of images) after each batch. condition(labels of a batch) is the model's condition
    input: the class ids themselves (MAR), or the T5 states of the prompts (LightGen)."""
    amp = DTYPES[cfg.dtype]
    images, tokens = [], []
    for b in range(0, len(indices), int(cfg.batch_size)):
        batch = indices[b:b + int(cfg.batch_size)]
        generators = [image_generator(cfg.seed, i) for i in batch]
        with torch.no_grad():
            cond = condition(labels[batch])
        with torch.autocast(model.fake_latent.device.type, dtype=amp) if amp else nullcontext():
            x = sample(model, method, cond, generators, cfg=cfg.cfg,
                       cfg_schedule=cfg.cfg_schedule, temperature=cfg.temperature)
            images.append(decode(x).numpy())
        if cfg.eval.get("save_tokens"):
            tokens.append(x.float().cpu().numpy())
        progress(len(batch))
    return np.concatenate(images), np.concatenate(tokens) if tokens else None


def wait_for_shards(out, num_shards, launched_together):
    """Rank 0's wait for the other ranks' shards: polled when they run now (torchrun), else None if missing."""
    while True:
        missing = [s for s in range(num_shards) if not shard_path(out, s).is_file()]
        if not missing or not launched_together:
            return not missing
        time.sleep(5)


def assemble(cfg, out, num_shards, n, labels):
    """samples.npz (all images in index order) and grid.png, from the shards."""
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
    save_grid(np.concatenate(grid)[:cfg.grid_images], out / "grid.png")


def run(cfg):
    rank, world, device = setup(cfg)
    text = is_prompt_eval(cfg.eval)
    if text != (cfg.model.get("arch", "mar") == "lightgen"):  # checked before building a large model
        raise ConfigError(f"model {cfg.model.key} is class-conditional; eval={cfg.eval.name} (prompts) needs a "
                          "text-to-image model (model=lightgen)" if text else
                          f"model {cfg.model.key} is text-to-image: choose a prompts eval set (eval=geneval "
                          "eval.prompts=PATH, or eval=prompts eval.prompts=FILE.txt)")
    if text:
        read_prompt_texts(prompt_file(cfg.eval))  # a missing or malformed prompts file fails here
    model = build_model(cfg.model, device, checkpoint=cfg.checkpoint)
    method = build_method(cfg.method, grid=(model.seq_h, model.seq_w))
    n, shard_size = num_images(cfg), int(cfg.shard_size)
    if text:  # text-to-image: "labels" are prompt indices (image i: prompt i // samples per prompt)
        labels, condition = text_conditions(cfg, model, device)
    else:
        labels = make_labels(n, model.config.class_num, cfg.eval.get("balanced", False), cfg.labels, cfg.eval.name)
        condition = torch.as_tensor
    decode = decoder(cfg.model, model, device)

    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "shards").mkdir(exist_ok=True)
    check_meta(out, cfg, shard_size, device)
    if rank == 0:
        write_run_json(out, cfg, device, world, "running")
    num_shards = math.ceil(n / shard_size)
    mine = [s for s in range(num_shards) if s % world == rank]  # strided: ranks finish together
    todo = [s for s in mine if not shard_done(out, s, np.array(shard_range(s, shard_size, n)),
                                              labels[shard_range(s, shard_size, n)])]
    print(f"{out}\n{n} images in {num_shards} shards; rank {rank}/{world}: {len(mine)} shards, "
          f"{len(mine) - len(todo)} already done", flush=True)

    wb = start_wandb(cfg, out) if rank == 0 else None
    made, start = 0, time.time()
    total = sum(len(shard_range(s, shard_size, n)) for s in todo)
    with tqdm(total=total, unit="img", desc=f"{cfg.model.key} {cfg.method.name}", disable=rank != 0) as bar:
        for s in todo:
            indices = list(shard_range(s, shard_size, n))
            images, tokens = make_shard(cfg, model, method, decode, labels, indices, bar.update, condition)
            if cfg.save_png:
                for i, image in zip(indices, images):
                    save_png(image, out / "images" / f"{i:06d}.png")
            write_shard(out, s, indices, labels[indices], images, tokens)  # last: marks the shard done
            made += len(indices)
            if wb is not None:
                wb.log({"images": made, "images_per_s": made / (time.time() - start), "shard": s})
    seconds = time.time() - start

    if rank != 0:
        print(f"rank {rank}: its shards are done; rank 0 assembles samples.npz", flush=True)
        return
    if not wait_for_shards(out, num_shards, launched_together=world > 1 and "TORCHELASTIC_RUN_ID" in os.environ):
        print("some shards are not done yet (other ranks still running?): run the same command again when they "
              "are, to assemble samples.npz", flush=True)
        return
    assemble(cfg, out, num_shards, n, labels)
    write_run_json(out, cfg, device, world, "done", session=None if not made else {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start)), "images": made,
        "seconds": round(seconds, 3), "images_per_s": round(made / seconds, 4) if seconds else None,
        "device": device_name(device), "batch_size": int(cfg.batch_size), "world_size": world})
    if wb is not None:
        import wandb
        wb.log({"grid": wandb.Image(str(out / "grid.png"))})
        wb.finish()
    print(f"wrote {out / 'samples.npz'} ({n} images), grid.png, run.json", flush=True)


@hydra.main(config_path=str(ROOT / "configs"), config_name="sample", version_base="1.3")
def main(cfg):
    try:
        run(cfg)
    except ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
