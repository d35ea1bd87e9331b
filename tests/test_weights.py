"""gtr.weights against a local HTTP server (127.0.0.1, no real network): download through
GTR_WEIGHTS_MIRROR, resume, refusal of bad files, the .ok sidecar, offline messages, the command line."""
import argparse
import hashlib
import http.server
import io
import json
import os
import socket
import threading

import numpy as np
import pytest
import torch

from gtr import weights


def _torch_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _npz_bytes():
    buf = io.BytesIO()
    np.savez(buf, mu=np.zeros(8), sigma=np.eye(8))
    return buf.getvalue()


# Tiny files in the official layouts (fact: LTH14/mar util/download.py, README).
MAR = _torch_bytes({"model": {"w": torch.randn(64, 64)}, "model_ema": {"w": torch.randn(64, 64)},
                    "args": argparse.Namespace(model="mar_base", diffloss_d=6), "epoch": 799})
KL16 = _torch_bytes({"model": {"encoder.w": torch.randn(32, 32)}})
STATS = _npz_bytes()


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves `files` with Range support; `cut` paths send half their body once, `garbage` paths send
    random bytes of the right length, `ranges=False` ignores Range (always 200)."""
    files, cut, garbage, log, ranges = {}, set(), set(), [], True

    def do_GET(self):
        rng = self.headers.get("Range")
        type(self).log.append((self.path, rng))
        body = self.files.get(self.path)
        if body is None:
            return self.send_error(404)
        if self.path in self.garbage:
            body = os.urandom(len(body))
        start = int(rng[len("bytes="):-1]) if rng and self.ranges else 0
        if start >= len(body) and rng and self.ranges:
            return self.send_error(416)
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if self.ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path in self.cut:
            self.cut.discard(self.path)
            self.wfile.write(body[start:start + (len(body) - start) // 2])
            return  # HTTP/1.0: the connection closes here, short of Content-Length
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    Handler.files = {"/mar_base/checkpoint-last.pth": MAR, "/mar_large/checkpoint-last.pth": MAR,
                     "/mar_huge/checkpoint-last.pth": MAR, "/vae/kl16.ckpt": KL16,
                     "/fid_stats/adm_in256_stats.npz": STATS}
    Handler.cut, Handler.garbage, Handler.log, Handler.ranges = set(), set(), [], True
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()  # quick shutdown
    for var in ("GTR_OFFLINE", "HF_HUB_OFFLINE", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GTR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GTR_WEIGHTS_MIRROR", f"http://127.0.0.1:{httpd.server_address[1]}/")
    yield Handler
    httpd.shutdown()
    httpd.server_close()


def test_download_layout_and_sidecar(server, tmp_path):
    root = tmp_path / "cache" / "weights"
    for name, body in (("mar_base", MAR), ("vae", KL16), ("fid_stats", STATS)):
        path = weights.fetch(name, progress=False)
        assert path == root / weights.FILES[name][0] and path.read_bytes() == body
        ok = json.loads((path.parent / (path.name + ".ok")).read_text())
        assert ok["sha256"] == hashlib.sha256(body).hexdigest() == weights.sha256(path)
        assert ok["size"] == len(body) and not (path.parent / (path.name + ".part")).exists()
    assert (root / "mar_base" / "checkpoint-last.pth").is_file() and (root / "vae" / "kl16.ckpt").is_file()


def test_resume_after_cut(server, tmp_path):
    server.cut.add("/mar_large/checkpoint-last.pth")
    with pytest.raises(weights.WeightsError, match="resume") as e:
        weights.fetch("mar_large", progress=False)
    dest = tmp_path / "cache" / "weights" / "mar_large" / "checkpoint-last.pth"
    part = dest.parent / "checkpoint-last.pth.part"
    assert "\n" not in str(e.value) and str(dest) in str(e.value)
    assert not dest.exists() and 0 < part.stat().st_size < len(MAR)
    assert weights.fetch("mar_large", progress=False).read_bytes() == MAR
    assert server.log[-1] == ("/mar_large/checkpoint-last.pth", f"bytes={len(MAR) // 2}-")
    assert not part.exists()


def test_no_range_support_restarts(server, tmp_path):
    server.ranges = False
    server.cut.add("/vae/kl16.ckpt")
    with pytest.raises(weights.WeightsError, match="truncated"):
        weights.fetch("vae", progress=False)
    assert not list((tmp_path / "cache" / "weights" / "vae").iterdir())  # no .part: cannot be resumed
    assert weights.fetch("vae", progress=False).read_bytes() == KL16


def test_stale_part_416_restarts(server, tmp_path):
    part = tmp_path / "cache" / "weights" / "vae" / "kl16.ckpt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * (len(KL16) + 10))  # longer than the file: the server answers 416
    assert weights.fetch("vae", progress=False).read_bytes() == KL16


@pytest.mark.parametrize("name,served", [("mar_huge", "garbage"), ("fid_stats", "garbage"), ("mar_base", KL16)])
def test_bad_file_refused_and_removed(server, tmp_path, name, served):
    rel = weights.FILES[name][0]
    if served == "garbage":
        server.garbage.add("/" + rel)
    else:
        server.files["/" + rel] = served  # a real checkpoint without "model_ema"
    with pytest.raises(weights.WeightsError) as e:
        weights.fetch(name, progress=False)
    dest = tmp_path / "cache" / "weights" / rel
    msg = str(e.value)
    assert "\n" not in msg and str(dest) in msg and weights.url_of(name) in msg and "refused" in msg
    if served != "garbage":
        assert "model_ema" in msg
    assert not list(dest.parent.iterdir())


def test_sidecar_skips_check_and_network(server, tmp_path, monkeypatch):
    path = weights.fetch("mar_base", progress=False)
    hits = len(server.log)
    monkeypatch.setattr(weights, "_check", lambda *a: pytest.fail("checked again"))
    monkeypatch.setenv("GTR_OFFLINE", "1")
    assert weights.fetch("mar_base", progress=False) == path and len(server.log) == hits
    expected = hashlib.sha256(MAR).hexdigest()
    monkeypatch.setattr(weights.hashlib, "sha256", lambda *a: pytest.fail("hashed again"))
    assert weights.sha256(path) == expected


def test_changed_file_is_rechecked(server, tmp_path):
    path = weights.fetch("vae", progress=False)
    path.write_bytes(os.urandom(len(KL16)))  # same size, new mtime: the sidecar no longer vouches for it
    os.utime(path, ns=(0, 0))
    with pytest.raises(weights.WeightsError, match="refused"):
        weights.fetch("vae", progress=False)
    assert not path.exists() and not (path.parent / "kl16.ckpt.ok").exists()
    assert weights.fetch("vae", progress=False).read_bytes() == KL16  # downloaded again


def test_offline_messages_are_one_line(server, tmp_path, monkeypatch):
    dest = tmp_path / "cache" / "weights" / "mar_base" / "checkpoint-last.pth"
    for var in ("GTR_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
        with pytest.raises(weights.WeightsError) as e:
            weights.fetch("mar_base", progress=False)
        msg = str(e.value)
        assert "\n" not in msg and weights.url_of("mar_base") in msg and str(dest) in msg
        monkeypatch.delenv(var)
    assert server.log == []
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("GTR_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}")
    with pytest.raises(weights.WeightsError) as e:
        weights.fetch("mar_base", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and f"http://127.0.0.1:{port}/mar_base/checkpoint-last.pth" in msg and str(dest) in msg
    assert not dest.parent.exists() or not list(dest.parent.iterdir())


def test_official_urls_without_mirror(monkeypatch, tmp_path):
    monkeypatch.delenv("GTR_WEIGHTS_MIRROR", raising=False)
    monkeypatch.setenv("GTR_OFFLINE", "1")  # no network: only the message
    with pytest.raises(weights.WeightsError, match="dropbox.com/scl/fi/hhmuvaiacrarfg28qxhwz/kl16.ckpt"):
        weights.fetch("vae", cache_dir=tmp_path, progress=False)
    assert weights.url_of("fid_stats").endswith("/fid_stats/adm_in256_stats.npz")


def test_describe(server, tmp_path):
    d = weights.describe("mar_base")
    assert d["entry"] == "model_ema" and d["url"] == weights.FILES["mar_base"][1]
    assert d["sha256"] == hashlib.sha256(MAR).hexdigest()
    assert weights.describe(d["path"]) == d  # the cached official file, named by its path
    own = tmp_path / "mine.pth"
    own.write_bytes(KL16)
    assert weights.describe(own) == {"path": str(own.resolve()), "url": None,
                                     "sha256": hashlib.sha256(KL16).hexdigest(), "entry": None}


def test_main(server, tmp_path, capsys):
    assert weights.main(["vae", "fid_stats"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split() == [str(tmp_path / "cache" / "weights" / "vae" / "kl16.ckpt"),
                                                    hashlib.sha256(KL16).hexdigest()]
    del server.files["/mar_huge/checkpoint-last.pth"]  # 404
    assert weights.main(["mar_huge", "nope"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "HTTP Error 404" in err[0] and "nope" in err[1]


# ---------------------------------------------------------------- the default source, end to end
SMALL_MAR_B = dict(width=32, depth=1, num_heads=2, buffer_size=4, class_num=10, diffloss_d=1, diffloss_w=32,
                   img_size=16, vae_stride=1, patch_size=4, vae_embed_dim=1)  # small, pixel tokens, named mar_base


def test_reproduce_and_sample_resolve_the_official_ema_checkpoint(server, tmp_path, monkeypatch):
    """With no checkpoint given, model=mar_b loads the official checkpoint-last.pth (its model_ema), fetched
    from the (local stand-in for the) official URL; reproduce's check finds every file; run.json names
    the file, its URL, the entry and its sha256."""
    import subprocess
    import sys
    from gtr.config import compose
    from gtr.models.mar import build_mar
    small = build_mar(**SMALL_MAR_B)
    ema = build_mar(**SMALL_MAR_B)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.5)
    Handler.files["/mar_base/checkpoint-last.pth"] = _torch_bytes(
        {"model": small.state_dict(), "model_ema": ema.state_dict(), "args": argparse.Namespace()})
    overrides = [f"+model.overrides.{k}={v}" for k, v in SMALL_MAR_B.items()]
    import importlib.util
    root = weights.Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("reproduce", root / "scripts" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    problems = reproduce.missing(compose(["experiment=table1", "model=mar_b", "+experiment/table1=s8_step", *overrides]))
    assert all("no CUDA GPU" in p for p in problems), problems  # everything else was fetched
    cache = weights.weights_dir()
    assert (cache / "mar_base" / "checkpoint-last.pth").is_file() and (cache / "vae" / "kl16.ckpt").is_file()
    assert (cache / "fid_stats" / "adm_in256_stats.npz").is_file()

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "scripts/sample.py", "model=mar_b", *overrides, "model.decoder=pixels",
                          "method=mar", "method.num_iter=2", "method.diffusion_steps=2", "n=2", "device=cpu",
                          "threads=1", f"out_root={tmp_path / 'out'}"], cwd=root, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    record = json.loads(next((tmp_path / "out").rglob("run.json")).read_text())
    used = record["weights"]["model"]
    assert used["url"] == weights.FILES["mar_base"][1] and used["entry"] == "model_ema"
    assert used["sha256"] == hashlib.sha256(Handler.files["/mar_base/checkpoint-last.pth"]).hexdigest()
