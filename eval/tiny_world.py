"""The tiny world's evaluation and report: scores of a row's images in the Fashion-MNIST classifier's
feature space, and the tables, plot and grids of every row (scripts/demo.py writes them).

Scores: FID, KID, IS, precision and recall in the classifier's features against the 10k test set
(eval/classifier.py), and the classifier's agreement with the class each image was sampled for (accuracy),
each with a 95% bootstrap interval over the row's images (eval/intervals.py). Each row's features are kept
(features/<row>.npz) so that rows can be compared pairwise (eval/claims.py).
"""
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from eval.claims import CLAIMS, evaluate_claims, load_claims, write_claims
from eval.intervals import Reference, image_features, resample_counts, row_scores, with_intervals
from eval.plots import plot_quality_vs_cost
from eval.tables import to_markdown
from gtr.data import FASHION_CLASSES
from gtr.images import save_grid
from gtr.load import model_on_meta

PAPER_TABLES = {1: "Table 1 — methods at the full budget and two reduced budgets",
                3: "Table 3 — GtR on the encoder-decoder (*) and on the diffusion (†), FTS",
                4: "Table 4 — which reconstruction tokens get the extra diffusion steps",
                5: "Table 5 — sampling order (GtR's counts and diffusion steps, order changed)"}


def score(images, labels, reference, features_path):
    """FID, KID, IS, accuracy and k-NN precision, each with its 95% interval (fid_lo, fid_hi, ...), and
    k-NN recall, of uint8 images (N, H, W, 1) sampled for `labels` (N,) against `reference`
    (eval.intervals.Reference), under their run-record names (record_field: knn_precision, knn_recall).
    Their classifier features, logits and labels are saved to `features_path` (.npz) for paired claims."""
    nchw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    feats, logits = image_features(nchw)
    features_path = Path(features_path)
    features_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = features_path.with_name(f"{features_path.stem}.tmp.npz")
    np.savez(tmp, features=feats.astype(np.float32), logits=logits.astype(np.float32), labels=np.asarray(labels))
    tmp.replace(features_path)
    scores = with_intervals(row_scores(feats, logits, labels, reference, resample_counts(len(feats))))
    return {record_field(name): value for name, value in scores.items()}


# Where the k-NN scores go in a run record: its "precision" is the run's dtype protocol (eval/records.py).
RECORD_FIELDS = {"precision": "knn_precision", "recall": "knn_recall"}


def record_field(name):
    """The run-record field of a score or its bound (precision_lo -> knn_precision_lo, fid -> fid)."""
    for score, field in RECORD_FIELDS.items():
        if name == score or name.startswith(score + "_"):
            return field + name[len(score):]
    return name


def features_file(out, row):
    """Where `score` keeps a row's features in a report folder: <out>/features/<row>.npz."""
    return Path(out) / "features" / f"{row.replace('/', '_')}.npz"


def load_features(path):
    """(features, logits, labels) saved by `score`, as scored (the classifier computes in float32: saving
    float32 loses nothing)."""
    data = np.load(path)
    return data["features"].astype(np.float64), data["logits"].astype(np.float64), data["labels"]


def save_row_grid(images, labels, path, caption, per_class=4):
    """The first `per_class` images of each class, one column per class (0..9, left to right)."""
    picks = [i for r in range(per_class) for c in range(10)
             for i in [np.flatnonzero(labels == c)[r:r + 1]] if len(i)]
    order = np.concatenate(picks) if picks else np.arange(0)
    classes = " | ".join(f"{c} {name}" for c, name in enumerate(FASHION_CLASSES))
    return save_grid(images[order], path, columns=10, scale=3, caption=f"{caption}\ncolumns: {classes}")


def short(key):
    """A row's name in plots: its key without the model part (tiny/step4 -> step4)."""
    return key.split("/", 1)[-1]


SCORES = ("fid", "kid", "is", "accuracy", "precision")   # with a 95% interval (eval/intervals.py); recall without
SUMMARY_SCORES = [field for score in SCORES for field in (score, f"{score}_lo", f"{score}_hi")] + ["recall"]


def pareto_front(cost, quality, group=None):
    """Which points no other point of their group beats on both cost and quality (lower is better for
    both); points without a finite cost and quality are on no front. group: e.g. each row's number of
    images (FID is compared only at equal n)."""
    cost, quality = np.asarray(cost, float), np.asarray(quality, float)
    group = np.zeros(len(cost)) if group is None else np.asarray(group)
    ok = np.isfinite(cost) & np.isfinite(quality)
    return np.array([bool(ok[i]) and not np.any(ok & (group == group[i]) & (cost <= c) & (quality <= q)
                                                 & ((cost < c) | (quality < q)))
                     for i, (c, q) in enumerate(zip(cost, quality))], dtype=bool)


def summary(records):
    """One row per record: what it is, what it cost, how good its images are with 95% intervals, and
    whether it is on the FID-vs-FLOPs Pareto front of these rows (the report's main table)."""
    base = {r["key"]: r for r in records}
    rows = []
    for r in records:
        ref = base.get(r.get("baseline"))
        row = {"row": short(r["key"]), "family": r.get("family"), "method": r["method"], "group": r.get("group") or "",
               "flops_G": r["flops_T"] * 1e3, "speed": ref["flops_T"] / r["flops_T"] if ref else np.nan,
               "latency_cpu_s": r["latency_cpu_s"], "n_images": r["num_images"]}
        for name in SUMMARY_SCORES:
            row[name] = r.get(record_field(name), np.nan)
        row["fid_delta"] = r["fid"] - ref["fid"] if ref else np.nan
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not len(frame):
        return frame
    for name in SCORES:  # older records lack some scores: None -> NaN
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    frame["pareto_flops"] = pareto_front(frame["flops_G"], frame["fid"], frame["n_images"])
    frame["pareto_latency"] = pareto_front(frame["latency_cpu_s"], frame["fid"], frame["n_images"])
    return frame.sort_values(["flops_G", "row"], ascending=[False, True], ignore_index=True)


def shown(table):
    """The summary as the README shows it: each score as "value [lo, hi]"."""
    out = table[["group", "method", "row", "flops_G", "speed", "latency_cpu_s", "n_images"]].copy()
    for name, digits in (("fid", 2), ("kid", 3), ("accuracy", 3), ("is", 2), ("precision", 3)):
        out[name] = ["–" if v != v else f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if lo == lo
                     else f"{v:.{digits}f}" for v, lo, hi in zip(table[name], table[f"{name}_lo"], table[f"{name}_hi"])]
    out["recall"] = table["recall"].round(3)
    out["front"] = ["FLOPs+latency" if f and t else "FLOPs" if f else "latency" if t else ""
                    for f, t in zip(table["pareto_flops"], table["pareto_latency"])]
    return out


def report(records, out, command, claims_file=CLAIMS):
    """README.md (a summary of every row, then the paper-shaped Tables 1, 3, 4, 5 of the rows that
    belong to them), summary.csv and table<N>.csv, claims.md (the claims of `claims_file`, by default
    configs/claims.yaml, from the rows' saved features), fid_vs_flops.png and fid_vs_latency.png, in `out`."""
    out = Path(out)
    table = summary(records)
    by_row = {short(r["key"]): r for r in records}
    meta = records[0]
    cfg = meta["config"]
    model = model_on_meta(OmegaConf.create(cfg["model"]))  # its token grid, from the shapes alone
    baseline = by_row.get(short(meta.get("baseline") or ""))
    base_name = (f"{baseline['method']} at {baseline['config']['method']['num_iter']} AR steps" if baseline
                 else f"{meta.get('baseline')}, not among these rows")
    lines = [f"# The tiny world (Fashion-MNIST MAR, {model.seq_h}x{model.seq_w} tokens, CPU)", "",
             f"Generated by `{command}` (scripts/demo.py). FID, KID, IS, precision and recall are in the feature space of "
             "a Fashion-MNIST classifier trained here (eval/classifier.py), against the 10k test set; accuracy is that "
             "classifier's agreement with the class label. Brackets: 95% intervals, a bootstrap over the row's images "
             "(eval/intervals.py says which and why). Compare FID only at equal n (it is biased upward at small n); KID "
             "is not. FLOPs: one image, CFG batch 2, counted on the meta device (no VAE: tokens are pixels). Speed = "
             f"FLOPs of the row's baseline ({base_name}) / FLOPs of the row. front: on the FID-vs-FLOPs (or "
             "-latency) Pareto front of these rows. The paper's claims, tested pairwise: claims.md.", "",
             "## Every row", "", to_markdown(shown(table)), ""]
    table.to_csv(out / "summary.csv", index=False)
    for number, title in PAPER_TABLES.items():
        mine = table[[number in by_row[row].get("config", {}).get("demo_tables", []) for row in table["row"]]]
        if len(mine):
            lines += [f"## {title}", "", to_markdown(shown(mine)), ""]
            mine.to_csv(out / f"table{number}.csv", index=False)
    sizes = sorted({r["num_images"] for r in records})
    lines += [f"{'/'.join(map(str, sizes))} images per row, cfg {cfg['cfg']}, seed {cfg['seed']}, batch {meta['batch_size']}, "
              f"{meta['device']}, torch {meta['torch_version']}, checkpoint {cfg['model']['checkpoint']}. Sample grids: "
              "grids/<row>.png (4 images per class, a column per class).", ""]
    (out / "README.md").write_text("\n".join(lines))
    features = {row: load_features(features_file(out, row)) for row in by_row if features_file(out, row).is_file()}
    claims = load_claims(claims_file)
    write_claims(claims, evaluate_claims(claims, by_row, features, Reference() if features else None),
                 out / "claims.md", command, claims_file)
    plot_fronts(table, by_row, out)


def plot_fronts(table, by_row, out):
    """fid_vs_flops.png and fid_vs_latency.png in `out` from `summary`'s table: a colour per family, a line
    per sweep, 95% intervals, the Pareto front ringed. `by_row`: {row: run record}."""
    sizes = sorted({by_row[row]["num_images"] for row in table["row"]})
    for x, column, label in (("flops_G", "pareto_flops", "GFLOPs per image"),
                             ("latency_cpu_s", "pareto_latency", "CPU seconds per image (batch of the row)")):
        points = pd.DataFrame([{"panel": by_row[row]["model"], "family": by_row[row].get("family"), "side": "ours",
                                "label": row, "sweep": by_row[row]["config"].get("sweep") or "", "x": t[x],
                                "fid": t["fid"], "fid_lo": t["fid_lo"], "fid_hi": t["fid_hi"], "front": t[column]}
                               for _, t in table.iterrows() for row in [t["row"]]])
        name = "fid_vs_flops.png" if x == "flops_G" else "fid_vs_latency.png"
        plot_quality_vs_cost(points, out / name, x="x", xlabel=label, ylabel="FID (classifier features), 95% interval",
                             title=f"tiny world, {'/'.join(map(str, sizes))} images a row; lines join a sweep's rows; "
                                   "black rings: the Pareto front")
