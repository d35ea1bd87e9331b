"""Download and cache the official files behind MAR's results (fact: LTH14/mar util/download.py).

    python -m gtr.weights [mar_base mar_large mar_huge vae fid_stats]   # default: all five

Files live in $GTR_CACHE_DIR/weights (default ~/.cache/gtr-bench/weights): mar_{base,large,huge}/
checkpoint-last.pth, vae/kl16.ckpt, fid_stats/adm_in256_stats.npz. A download resumes from `<file>.part`,
is checked (size, then torch.load / np.load and the expected entry) and renamed into place; `<file>.ok`
records size, mtime and sha256 so that later calls skip the check and the hash.

GTR_WEIGHTS_MIRROR=http://host:port/prefix/ fetches each file from MIRROR + "<name>/<filename>" (e.g.
.../mar_base/checkpoint-last.pth) instead of the official URL, i.e. the cache layout: `python -m
http.server` in a filled weights folder is a mirror (for tests, and sites that host copies).
GTR_OFFLINE=1 or HF_HUB_OFFLINE=1: no network at all; a missing file is an error naming the URL to
fetch on a connected machine and the path to put it at.
"""
import argparse
import hashlib
import http.client
import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

# name -> (path under the cache, official URL, entry evaluation reads). fact: LTH14/mar util/download.py
# and README (the URLs; MAR checkpoints hold "model", "model_ema" and "args", evaluation reads "model_ema";
# kl16.ckpt holds "model"); the stats are fid_stats/adm_in256_stats.npz of that repository at fe470ac.
# dl=0 is kept as upstream has it: with the Wget user-agent Dropbox sends the file itself, not its preview
# page (fact: LTH14/mar util/download.py fetches these URLs so), so dl=1 is not needed, and the URL stays
# the one upstream publishes; an HTML page would fail the format check anyway.
FILES = {
    "mar_base": ("mar_base/checkpoint-last.pth", "https://www.dropbox.com/scl/fi/f6dpuyjb7fudzxcyhvrhk/"
                 "checkpoint-last.pth?rlkey=a6i4bo71vhfo4anp33n9ukujb&dl=0", "model_ema"),
    "mar_large": ("mar_large/checkpoint-last.pth", "https://www.dropbox.com/scl/fi/pxacc5b2mrt3ifw4cah6k/"
                  "checkpoint-last.pth?rlkey=m48ovo6g7ivcbosrbdaz0ehqt&dl=0", "model_ema"),
    "mar_huge": ("mar_huge/checkpoint-last.pth", "https://www.dropbox.com/scl/fi/1qmfx6fpy3k7j9vcjjs3s/"
                 "checkpoint-last.pth?rlkey=4lae281yzxb406atp32vzc83o&dl=0", "model_ema"),
    "vae": ("vae/kl16.ckpt", "https://www.dropbox.com/scl/fi/hhmuvaiacrarfg28qxhwz/"
            "kl16.ckpt?rlkey=l44xipsezc8atcffdp4q7mwmh&dl=0", "model"),
    "fid_stats": ("fid_stats/adm_in256_stats.npz", "https://raw.githubusercontent.com/LTH14/mar/"
                  "fe470ac24afbee924668d8c5c83e9fec60af3a73/fid_stats/adm_in256_stats.npz", None),
}
USER_AGENT = "Wget/1.16 (linux-gnu)"  # fact: LTH14/mar util/download.py sends this header
TIMEOUT = 60  # seconds without a byte before a connection counts as blocked
CHUNK = 1 << 20


class WeightsError(ValueError):
    """A file that cannot be had: offline, blocked, truncated or not what it should be. One line."""


def weights_dir(cache_dir=None):
    """The weights folder: `cache_dir` if given, else $GTR_CACHE_DIR/weights (rule of eval.fid.cache_dir)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("GTR_CACHE_DIR", Path.home() / ".cache" / "gtr-bench")).expanduser() / "weights"


def url_of(name):
    """Where `name` is fetched from: the mirror when GTR_WEIGHTS_MIRROR is set, else the official URL."""
    mirror = os.environ.get("GTR_WEIGHTS_MIRROR")
    return mirror.rstrip("/") + "/" + FILES[name][0] if mirror else FILES[name][1]


def _offline():
    # read at call time, so that setting the variable in a running process (or a test) takes effect
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("GTR_OFFLINE", "HF_HUB_OFFLINE"))


def _sidecar(path):  # "<file>.ok": size, mtime and sha256 of a file that passed its check
    return Path(str(path) + ".ok")


def _read_sidecar(path):
    # valid only while the file keeps the size and mtime it had when checked: a replaced file is rechecked
    try:
        ok, st = json.loads(_sidecar(path).read_text()), os.stat(path)
        return ok if ok["size"] == st.st_size and ok["mtime"] == st.st_mtime else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def sha256(path):
    """Hex sha256 of a file, read in chunks; taken from its `.ok` sidecar when that is still valid."""
    ok = _read_sidecar(path)
    if ok and ok.get("sha256"):
        return ok["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _check(path, entry, is_npz):
    # Raise if the file is not what it should be. torch is imported here: seconds, and only needed once.
    if is_npz:
        import numpy as np
        with np.load(path, allow_pickle=False) as d:
            missing = {"mu", "sigma"} - set(d.files)
            if missing:
                raise ValueError(f"no {sorted(missing)} in the npz (keys {d.files})")
        return
    import torch
    with torch.serialization.safe_globals([argparse.Namespace]):  # official checkpoints hold their args
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not isinstance(state.get(entry), dict):
        keys = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"no {entry!r} state dict in it (has {keys})")


def _download(url, part, name, progress):
    # Append to `part` from its current size (HTTP Range); returns once it holds the whole body.
    start = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if start:
        req.add_header("Range", f"bytes={start}-")
    try:
        r = urllib.request.urlopen(req, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not start:
            raise
        part.unlink()  # 416: the part is not a prefix the server can continue; start over
        return _download(url, part, name, progress)
    with r:
        if r.status != 206:
            start = 0  # 200: the server ignored the range and sends everything
        length = r.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        m = re.match(r"bytes (\d+)-", r.headers.get("Content-Range") or "")
        if r.status == 206 and m and int(m.group(1)) != start:
            raise OSError(f"server resumed at byte {m.group(1)}, not {start}")
        resumable = r.status == 206 or r.headers.get("Accept-Ranges", "").lower() == "bytes"
        with open(part, "ab" if start else "wb") as f, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                                            unit_divisor=1024, desc=name, disable=not progress) as bar:
            try:
                for block in iter(lambda: r.read(CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
                reason = None
            except (OSError, http.client.HTTPException) as e:  # a reset or timeout mid-body: truncated too
                reason = f"{type(e).__name__}: {e}"
            size = f.tell()
    if reason or (total is not None and size != total):
        if not resumable:
            part.unlink()  # the server cannot continue it: a later run starts from zero
        raise OSError(f"truncated transfer, {size} of {total} bytes ({reason or 'connection closed'})"
                      + ("; run again to resume" if resumable else ""))


def _one_line(text):
    return " ".join(str(text).split())


def fetch(name, cache_dir=None, progress=True):
    """The local file for `name` (a key of FILES), downloaded and checked first if absent. Returns a Path.

    Raises WeightsError (one line) when offline, blocked, truncated, or when the file fails its check.
    """
    if name not in FILES:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(FILES)}")
    rel, _, entry = FILES[name]
    dest, url = weights_dir(cache_dir) / rel, url_of(name)
    if dest.is_file() and _read_sidecar(dest):
        return dest
    if not dest.is_file():
        if _offline():
            raise WeightsError(f"{name}: offline (GTR_OFFLINE/HF_HUB_OFFLINE) and {dest} is missing: "
                               f"download {url} on a connected machine and put it at {dest}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = Path(str(dest) + ".part")
        try:
            _download(url, part, name, progress)
        except (OSError, http.client.HTTPException, ValueError) as e:  # URLError, HTTPError, timeout, cut
            raise WeightsError(_one_line(f"{name}: cannot download ({type(e).__name__}: {e}): download {url} "
                                         f"on a connected machine and put it at {dest}")) from None
        checked = part
    else:
        checked = dest  # put there by hand, or the sidecar went stale: check it once
    try:
        _check(checked, entry, rel.endswith(".npz"))
    except Exception as e:
        checked.unlink(missing_ok=True)
        _sidecar(dest).unlink(missing_ok=True)
        raise WeightsError(_one_line(f"refused {dest} (from {url}): {type(e).__name__}: {str(e)[:200]}; "
                                     "removed it")) from None
    if checked != dest:
        os.replace(checked, dest)  # atomic: dest is either absent or complete and checked
    st = dest.stat()
    _sidecar(dest).write_text(json.dumps({"size": st.st_size, "mtime": st.st_mtime, "sha256": sha256(dest)}))
    return dest


def describe(name_or_path, cache_dir=None):
    """What a run record needs: {"path", "url", "sha256", "entry"}.

    A name (key of FILES) is fetched if absent; url is its official URL and entry the state dict that
    evaluation reads ("model_ema", "model", None for the stats). A path of the user's own file gets
    url None and entry None, unless it is the cached official file of some name.
    """
    key = str(name_or_path)
    if key not in FILES:
        path = Path(key).expanduser().resolve()
        key = next((n for n, (rel, _, _) in FILES.items() if (weights_dir(cache_dir) / rel).resolve() == path), None)
        if key is None:
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist")
            return {"path": str(path), "url": None, "sha256": sha256(path), "entry": None}
    path = fetch(key, cache_dir, progress=False)
    return {"path": str(path), "url": FILES[key][1], "sha256": sha256(path), "entry": FILES[key][2]}


def main(argv=None):
    """`python -m gtr.weights [names...]`: fetch each (default all), print "path sha256" per line."""
    p = argparse.ArgumentParser(prog="python -m gtr.weights", description=main.__doc__)
    p.add_argument("names", nargs="*", help=f"any of {', '.join(FILES)} (default: all)")
    a = p.parse_args(argv)
    failed = False
    for name in a.names or list(FILES):
        try:
            path = fetch(name)
            print(f"{path} {sha256(path)}", flush=True)
        except WeightsError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
