"""The paper's claims tested on the tiny world: each a set of paired comparisons of rows (configs/claims.yaml),
with the difference, its 95% interval and a verdict, written to claims.md beside the tiny-world tables.

Two rows are compared on the same bootstrap resamples of their images (eval/intervals.py): image i of every
row has the same seed and label, so what varies between the rows is the method alone.
"""
import math
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from eval.intervals import interval, resample_counts, row_scores
from gtr.config import CONFIG_DIR

CLAIMS = CONFIG_DIR / "claims.yaml"
SHOWN = ("fid", "kid", "accuracy")   # the differences each test shows; the verdict is FID's


def claims_path(name="claims"):
    """configs/<name>.yaml, the claims a tiny-world report tests (demo.claims; the paper's: claims)."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not isinstance(name, str) or not name.replace("_", "").isalnum() or not path.is_file():
        raise ValueError(f"demo.claims must name a claims file in configs/ (e.g. claims), got {name!r}")
    return path


def load_claims(path=CLAIMS):
    """{name: claim} from configs/claims.yaml, checked: each claim has `claim` and `paper` texts, `tests` as
    [row, better|no_worse, other row] triples, and optionally `min_speed` (> 0) and `margin` (>= 0)."""
    claims = OmegaConf.to_container(OmegaConf.load(path))
    if not isinstance(claims, dict) or not claims:
        raise ValueError(f"{path}: expected claims by name, got {claims!r}")
    for name, claim in claims.items():
        if not isinstance(claim, dict) or not all(isinstance(claim.get(k), str) for k in ("claim", "paper")):
            raise ValueError(f"{path}: {name}: a claim needs the texts `claim` and `paper`")
        tests = claim.get("tests")
        if not isinstance(tests, list) or not tests:
            raise ValueError(f"{path}: {name}: `tests` must be a list of [row, better|no_worse, other row]")
        for test in tests:
            if not isinstance(test, list) or len(test) != 3 or test[1] not in ("better", "no_worse"):
                raise ValueError(f"{path}: {name}: a test is [row, better|no_worse, other row], got {test}")
        for knob, low in (("min_speed", 0.0), ("margin", 0.0)):
            value = claim.get(knob)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < low
                                      or (knob == "min_speed" and value == 0)):
                raise ValueError(f"{path}: {name}: {knob} must be a number {'>' if knob == 'min_speed' else '>='} "
                                 f"{low:g}, got {value!r}")
    return claims


def verdict(kind, lo, hi, margin=0.0):
    """holds / fails / within noise for a FID difference (row - other: lower is better) with interval
    (lo, hi). better: below 0; no_worse: below `margin` (a loss of at most margin FID points)."""
    if kind == "better":
        return "holds" if hi < 0 else "fails" if lo > 0 else "within noise"
    return "holds" if hi <= margin else "fails" if lo > margin else "within noise"


def images_to_decide(n, value, lo, hi, threshold=0.0):
    """Images per row that would put the interval on one side of `threshold` if the difference stayed at
    `value` (the interval's half-width shrinks as 1/sqrt(n)); None when the difference is the threshold."""
    if value == threshold:
        return None
    return int(math.ceil(n * ((hi - lo) / 2 / abs(value - threshold)) ** 2))


def paired(scores, other):
    """{metric: (difference, lo, hi)} of row - other from two rows' row_scores on the same bootstrap
    resamples of the same images (same seeds and labels)."""
    out = {}
    for metric in SHOWN:
        value = scores[metric][0] - other[metric][0]
        out[metric] = (value, *interval(value, scores[metric][1] - other[metric][1]))
    return out


def evaluate_claims(claims, records, features, reference):
    """One dict per test: the claim, the rows, FLOPs ratio, each shown difference with its interval, the
    verdict. `records`: {row: run record}; `features`: {row: (features, logits, labels)}. Rows missing
    from either are "not run"; rows of other images (n, labels or seed differ) "not comparable"."""
    results, scores = [], {}

    def scored(row):
        if row not in scores:
            scores[row] = row_scores(*features[row], reference, resample_counts(len(features[row][0])))
        return scores[row]

    for name, claim in claims.items():
        for row, kind, other in claim["tests"]:
            result = {"claim": name, "row": row, "kind": kind, "other": other}
            missing = [r for r in (row, other) if r not in records or r not in features]
            if missing:
                results.append({**result, "verdict": f"not run ({', '.join(missing)} missing)"})
                continue
            n = len(features[row][0])
            seeds = {records[r].get("config", {}).get("seed") for r in (row, other)}
            if len(features[other][0]) != n or not np.array_equal(features[row][2], features[other][2]) \
                    or len(seeds) != 1:
                results.append({**result, "verdict": "not comparable (different images: n, labels or seed differ)"})
                continue
            diffs = paired(scored(row), scored(other))
            speed = records[other]["flops_T"] / records[row]["flops_T"]
            value, lo, hi = diffs["fid"]
            margin = claim.get("margin", 0.0) * scored(other)["fid"][0] if kind == "no_worse" else 0.0
            fid_verdict = verdict(kind, lo, hi, margin)
            kid_margin = claim.get("margin", 0.0) * max(scored(other)["kid"][0], 0.0) if kind == "no_worse" else 0.0
            result.update(n=n, speed=speed, margin=margin, verdict=fid_verdict,
                          kid_agrees=verdict(kind, *diffs["kid"][1:], kid_margin) == fid_verdict,
                          **{f"{m}_{part}": v for m, d in diffs.items() for part, v in zip(("diff", "lo", "hi"), d)})
            if claim.get("min_speed") and speed < claim["min_speed"]:
                result["verdict"] = f"fails (FLOPs ratio {speed:.2f} < {claim['min_speed']})"
            elif fid_verdict == "within noise":
                result["to_decide"] = images_to_decide(n, value, lo, hi, margin)
            if kind == "better" and speed < 0.98:
                result["note"] = f"{row} spends {1 / speed:.2f}x the FLOPs of {other}"
            results.append(result)
    return results


def _fmt(value, lo, hi, digits):
    return f"{value:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def claim_verdict(tests):
    """A claim's overall verdict from its tests' verdicts: holds / fails / within noise when they all
    agree, else the count of each."""
    kinds = [v if v in ("holds", "within noise") else v.split(" (")[0] for v in (t["verdict"] for t in tests)]
    if len(set(kinds)) == 1:
        return kinds[0]
    return ", ".join(f"{kinds.count(k)} of {len(kinds)} {k}" for k in
                     ("holds", "fails", "within noise", "not run", "not comparable") if k in kinds)


def write_claims(claims, results, path, command, source=CLAIMS):
    """claims.md: per claim its source in the paper, then a table of its tests. `source`: the claims file."""
    source = Path(source)
    title = "The paper's claims" if source == CLAIMS else f"The claims of configs/{source.name}"
    lines = [f"# {title} on the tiny world", "",
             f"Generated by `{command}` (eval/claims.py; the claims and their tests: configs/{source.name}).",
             "Each test compares two rows image by image (same seeds and labels); a difference is row - other "
             "with its 95% interval (standard bootstrap interval over the images, 1000 resamples shared by both "
             "rows: eval/intervals.py). Lower FID/KID is better, higher accuracy. The verdict is FID's: "
             "`better` (the row's FID is lower) *holds* when the interval lies below 0, *fails* when above; "
             "`no_worse` (the row keeps the other's quality) *holds* when the interval lies below the claim's "
             "margin (a share of the other row's FID: the loss is at most that), *fails* when above it; "
             "otherwise *within noise*, with the images per row that would decide it if the difference stayed "
             "where it is. KID (unbiased, no small-sample bias) agrees with the verdict unless marked.", ""]
    for name, claim in claims.items():
        tests = [r for r in results if r["claim"] == name]
        lines += [f"## {name}: {claim['claim']} — {claim_verdict(tests)}", "",
                  f"Paper: {claim['paper']}." + (f" Needs FLOPs ratio >= {claim['min_speed']}." if claim.get("min_speed") else "")
                  + (f" Margin of `no_worse`: {100 * claim['margin']:g}% of the other row's FID." if claim.get("margin") else ""),
                  "", "| test | FLOPs ratio | ΔFID [95%] | ΔKID [95%] | Δaccuracy [95%] | n | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for t in tests:
            if "fid_diff" not in t:
                lines.append(f"| {t['row']} {t['kind']} {t['other']} | | | | | | {t['verdict']} |")
                continue
            verdict_text = t["verdict"]
            if t.get("to_decide"):
                verdict_text += f" (~{t['to_decide']:,} images a row to decide)"
            if not t["kid_agrees"]:
                verdict_text += "; KID disagrees"
            if t.get("note"):
                verdict_text += f"; {t['note']}"
            margin_text = f" (margin {t['margin']:.2f})" if t["kind"] == "no_worse" else ""
            lines.append(f"| {t['row']} {t['kind']} {t['other']} | {t['speed']:.2f} | "
                         f"{_fmt(t['fid_diff'], t['fid_lo'], t['fid_hi'], 2)}"
                         f"{margin_text} | "
                         f"{_fmt(t['kid_diff'], t['kid_lo'], t['kid_hi'], 3)} | "
                         f"{_fmt(t['accuracy_diff'], t['accuracy_lo'], t['accuracy_hi'], 3)} | {t['n']} | {verdict_text} |")
        lines.append("")
    Path(path).write_text("\n".join(lines))
    return path
