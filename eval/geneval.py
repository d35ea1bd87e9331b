"""GenEval (Table 2): export gtr-bench samples in GenEval's layout, run its scorer, summarise.

GenEval (djghosh13/geneval) cannot be installed next to gtr-bench: it is not on PyPI and needs its own
environment (Python 3.9, torch 1.12, mmcv-full 1.7, mmdet 2.x, a Mask2Former checkpoint, CLIP ViT-L/14,
CUDA). So this module does the three parts that need none of that:

1. `export_layout`: a run folder (images/NNNNNN.png, image i drawn for prompt i // samples_per_prompt)
   becomes GenEval's folder layout, <out>/<p:05d>/metadata.jsonl + samples/<k:04d>.png;
2. `run_evaluation`: GenEval's own evaluation/evaluate_images.py, run with the user's GenEval python;
3. `summarize`: the per-task and overall scores from its results file, as its summary_scores.py does.

The prompts come from the user's GenEval checkout (prompts/evaluation_metadata.jsonl), never from here.

    python -m eval.geneval export RUN_DIR --prompts P --out LAYOUT [--samples-per-prompt 4]
    python -m eval.geneval score LAYOUT --geneval-dir D --python PY --detector DIR --outfile RESULTS
    python -m eval.geneval summarize RESULTS [--json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from gtr.config import ConfigError
from gtr.prompts import PROMPTS_ENV, read_prompts

# Paper name (GtR Table 2 columns) -> GenEval task tag, in GenEval's summary order.
# fact: djghosh13/geneval prompts/evaluation_metadata.jsonl uses exactly these six tags, in this order of first
# appearance (80 single_object, 99 two_object, 80 counting, 94 colors, 100 position, 100 color_attr = 553 prompts);
# summary_scores.py lists tasks in order of first appearance in the results (groupby sort=False), and its README
# table uses this column order.
TASKS = {
    "single_obj": "single_object",
    "two_obj": "two_object",
    "counting": "counting",
    "colors": "colors",
    "position": "position",
    "color_attr": "color_attr",
}
TAG_TO_TASK = {tag: name for name, tag in TASKS.items()}

NUM_PROMPTS = 553          # fact: djghosh13/geneval prompts/evaluation_metadata.jsonl has 553 lines
SAMPLES_PER_PROMPT = 4     # fact: djghosh13/geneval generation/diffusers_generate.py --n_samples default 4
# fact: djghosh13/geneval evaluation/evaluate_images.py loads <--model-path>/<options.model>.pth with this default
# name; evaluation/download_models.sh saves the checkpoint under that name in the folder it is given.
DETECTOR_NAME = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco"

# fact: djghosh13/geneval evaluation/evaluate_images.py scores every subfolder whose name is all digits, and in
# its samples/ every file whose name re.match()es r"\d+\.png".
_SAMPLE_RE = re.compile(r"\d+\.png")
_RUN_IMAGE_RE = re.compile(r"(\d{6})\.png")  # gtr-bench's sampler writes images/{i:06d}.png


class GenEvalError(ValueError):
    """A GenEval input, layout or run problem, with a message that says what to do."""


# ----------------------------------------------------------------------------- prompts

def image_prompt(i: int, samples_per_prompt: int = SAMPLES_PER_PROMPT) -> tuple[int, int]:
    """(prompt index, sample index) of gtr-bench image i: images are prompt-major, samples_per_prompt each."""
    return divmod(i, samples_per_prompt)


# ----------------------------------------------------------------------------- export

def _some(indices, limit=10) -> str:
    """A short list for messages: the first `limit` items, then how many more."""
    indices = sorted(indices)
    text = ", ".join(map(str, indices[:limit]))
    return text + (f", ... ({len(indices) - limit} more)" if len(indices) > limit else "")


def _place(src: Path, dst: Path) -> str:
    """Put src at dst as a hard link (no extra disk), else a copy; keep dst if it already holds the same bytes."""
    if dst.exists():
        if os.path.samefile(src, dst) or (dst.stat().st_size == src.stat().st_size
                                          and dst.read_bytes() == src.read_bytes()):
            return "kept"
    tmp = dst.with_name(dst.name + ".tmp")  # not a \d+.png name, so GenEval never scores a leftover
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        how = "linked"
    except OSError:  # another filesystem, or links not allowed
        shutil.copyfile(src, tmp)
        how = "copied"
    os.replace(tmp, dst)  # atomic: a stopped export never leaves a half-written sample
    return how


def export_layout(run_dir, prompts, out_dir, samples_per_prompt: int = SAMPLES_PER_PROMPT) -> dict:
    """Write a gtr-bench run's images in GenEval's layout; returns counts (prompts, images, linked, copied, kept).

    run_dir/images/{i:06d}.png is image i, for prompt i // samples_per_prompt (`image_prompt`). Under out_dir:
    <p:05d>/metadata.jsonl (prompt p's metadata object, one JSON line) and <p:05d>/samples/<k:04d>.png.
    Images are hard-linked when possible, else copied. `prompts` is a list from `read_prompts` or a path.
    Refuses (GenEvalError) unless the run has exactly len(prompts) * samples_per_prompt images, or when out_dir
    already holds GenEval entries this export would not write (GenEval would score them too). Re-running is safe.
    """
    if not isinstance(prompts, list):
        prompts = read_prompts(prompts)
    if samples_per_prompt < 1:
        raise GenEvalError(f"samples_per_prompt must be at least 1, not {samples_per_prompt}")
    images_dir = Path(run_dir) / "images"
    if not images_dir.is_dir():
        raise GenEvalError(f"{images_dir} does not exist: run_dir must be a gtr-bench run folder "
                           f"with images/NNNNNN.png")
    found = {int(m.group(1)) for f in images_dir.iterdir() if (m := _RUN_IMAGE_RE.fullmatch(f.name))}
    expected = len(prompts) * samples_per_prompt
    missing = set(range(expected)) - found
    if missing:
        short = {image_prompt(i, samples_per_prompt)[0] for i in missing}
        raise GenEvalError(
            f"{len(missing)} of {expected} images missing in {images_dir} "
            f"({len(prompts)} prompts x {samples_per_prompt}); prompt indices: {_some(short)}")
    if len(found) != expected:
        raise GenEvalError(
            f"{images_dir} holds {len(found)} images, not {len(prompts)} prompts x {samples_per_prompt} = "
            f"{expected}: check the prompts file and samples_per_prompt "
            f"(extra image indices: {_some(found - set(range(expected)))})")

    out_dir = Path(out_dir)
    # fact: djghosh13/geneval README shows samples/0000.png (4 digits; diffusers_generate.py itself writes 5);
    # evaluate_images.py takes any \d+.png name, so both score alike.
    wanted = {f"{p:05d}/samples/{k:04d}.png" for p in range(len(prompts)) for k in range(samples_per_prompt)}
    stray = sorted(set(layout_images(out_dir)) - wanted) if out_dir.is_dir() else []
    if stray:  # checked before writing anything
        raise GenEvalError(f"{out_dir} already holds samples this export does not write ({_some(stray, 3)}), which "
                           f"GenEval would score too: export into an empty folder")
    counts = collections.Counter()
    for p, metadata in enumerate(prompts):
        folder = out_dir / f"{p:05d}"
        samples = folder / "samples"
        samples.mkdir(parents=True, exist_ok=True)
        # fact: djghosh13/geneval generation/diffusers_generate.py json.dump()s the prompt's metadata line into
        # metadata.jsonl and evaluate_images.py json.load()s it back, so it is one JSON object.
        text = json.dumps(metadata) + "\n"
        meta = folder / "metadata.jsonl"
        if not meta.is_file() or meta.read_text(encoding="utf-8") != text:
            meta.write_text(text, encoding="utf-8")
        for k in range(samples_per_prompt):
            i = p * samples_per_prompt + k
            counts[_place(images_dir / f"{i:06d}.png", samples / f"{k:04d}.png")] += 1
    return {"prompts": len(prompts), "images": expected, "linked": counts["linked"],
            "copied": counts["copied"], "kept": counts["kept"]}


# ----------------------------------------------------------------------------- GenEval's scorer

def layout_images(layout_dir) -> list[str]:
    """The images GenEval's evaluate_images.py would score in layout_dir, as sorted "PPPPP/samples/K.png" keys."""
    keys = []
    for folder in Path(layout_dir).iterdir():
        if folder.is_dir() and folder.name.isdigit() and (folder / "samples").is_dir():
            keys += [f"{folder.name}/samples/{f.name}" for f in (folder / "samples").iterdir()
                     if f.is_file() and _SAMPLE_RE.match(f.name)]
    return sorted(keys)


def _result_images(outfile: Path) -> list[str]:
    """The images a results file covers, as `layout_images` keys; [] for a file that is not GenEval's results."""
    keys = []
    try:
        with open(outfile, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    # fact: djghosh13/geneval evaluate_images.py writes filename = <imagedir>/<PPPPP>/samples/<name>
                    parts = Path(json.loads(line)["filename"]).parts
                    keys.append("/".join(parts[-3:]))
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return sorted(keys)


def evaluate_command(layout_dir, outfile, geneval_dir, python="python", detector_path=None, extra=()) -> list[str]:
    """The argv that runs GenEval's evaluation/evaluate_images.py on layout_dir, writing outfile.

    As its README: `python evaluation/evaluate_images.py IMAGE_FOLDER --outfile RESULTS --model-path DETECTOR_DIR`.
    detector_path is the folder holding <DETECTOR_NAME>.pth (what download_models.sh fills); None leaves
    GenEval's default ("./", i.e. geneval_dir, where the command runs). `extra` is appended as is (for example
    ["--model-config", CFG] or ["--options", "threshold=0.3"]). Paths are made absolute: the command runs in
    geneval_dir.
    """
    # fact: djghosh13/geneval evaluation/evaluate_images.py arguments: imagedir, --outfile (default results.jsonl),
    # --model-config (default: mmdet's configs/mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py),
    # --model-path (default "./"), --options KEY=VALUE ...
    argv = [str(python), str(Path(geneval_dir).resolve() / "evaluation" / "evaluate_images.py"),
            str(Path(layout_dir).resolve()), "--outfile", str(Path(outfile).resolve())]
    if detector_path is not None:
        argv += ["--model-path", str(Path(detector_path).resolve())]
    return argv + [str(a) for a in extra]


def run_evaluation(layout_dir, outfile, geneval_dir, python="python", detector_path=None, extra=(),
                   force: bool = False) -> Path:
    """Run GenEval's evaluate_images.py (in geneval_dir, with its environment's python); returns outfile.

    Skipped when outfile already holds one result per image of layout_dir (matched by file name), unless force:
    scoring 553 x 4 images takes a while and a finished results file is never redone by accident (after
    exporting other images under the same names, pass force). `extra` goes to `evaluate_command`. The scorer's
    stderr is passed through; on failure, GenEvalError carries its last lines.
    """
    script = Path(geneval_dir or ".") / "evaluation" / "evaluate_images.py"
    if not geneval_dir or not script.is_file():
        raise GenEvalError(
            f"{f'{script} not found' if geneval_dir else 'no GenEval checkout given'}: clone djghosh13/geneval, set up "
            f"its environment as its README says, then pass eval.geneval_dir=PATH and "
            f"eval.geneval_python=PATH/TO/ITS/python")
    layout_dir, outfile = Path(layout_dir), Path(outfile)
    images = layout_images(layout_dir) if layout_dir.is_dir() else []
    if not images:
        raise GenEvalError(f"{layout_dir} holds no images in GenEval's layout: "
                           f"run `python -m eval.geneval export` first")
    if not force and outfile.is_file() and _result_images(outfile) == images:
        return outfile  # done: one result per image of this layout

    argv = evaluate_command(layout_dir, outfile, geneval_dir, python, detector_path, extra)
    tail = collections.deque(maxlen=20)
    try:
        proc = subprocess.Popen(argv, cwd=geneval_dir, stderr=subprocess.PIPE, text=True, errors="replace")
    except OSError as e:
        raise GenEvalError(f"cannot run GenEval's python {python!r} ({e.strerror}): pass eval.geneval_python="
                           f"PATH/TO/ITS/python") from None
    for line in proc.stderr:  # shown as it comes (a long run), the end kept for the error message
        sys.stderr.write(line)
        tail.append(line.rstrip("\n"))
    if proc.wait() != 0:
        # First line: the error itself (usually stderr's last line); then more context for callers.
        raise GenEvalError(f"GenEval's evaluate_images.py failed (exit {proc.returncode}): "
                           f"{tail[-1] if tail else 'no stderr'}\nlast lines of its stderr:\n" + "\n".join(tail))
    # fact: djghosh13/geneval evaluation/evaluate_images.py writes the whole results file once, at the end.
    got = _result_images(outfile)
    if got != images:
        raise GenEvalError(f"GenEval's evaluate_images.py ended without one result per image in {outfile} "
                           f"({len(got)} results, {len(images)} images)")
    return outfile


# ----------------------------------------------------------------------------- scores

def summarize(results_path) -> dict:
    """Per-task and overall GenEval scores from evaluate_images.py's results file.

    As summary_scores.py: a task's score is the mean of `correct` over its images (per image, not per prompt),
    and overall is the mean of the task scores (not of all images). Returns TASKS' names -> score (None for a
    task with no images), "overall", "num_images", "num_prompts", "n_<task>" (images per task) and
    "missing_tasks" (tasks without results: GenEval's overall then averages the others, so it is not comparable).
    """
    # fact: djghosh13/geneval evaluation/summary_scores.py: df.groupby('tag')['correct'].mean() per task, then
    # np.mean over the task scores; "Total prompts" counts distinct `metadata` strings.
    path = Path(results_path)
    if not path.is_file():
        raise GenEvalError(f"GenEval results file not found: {path}")
    per_task = {name: [] for name in TASKS}
    prompts = set()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise GenEvalError(f"{path} line {number} is not valid JSON ({e.msg})") from None
            if not (isinstance(row, dict) and isinstance(row.get("tag"), str)
                    and row.get("correct") in (True, False)):
                raise GenEvalError(f"{path} line {number} is not a GenEval result: it needs \"tag\" and a "
                                   f"true/false \"correct\"")
            if row["tag"] not in TAG_TO_TASK:
                raise GenEvalError(f"{path} line {number}: unknown GenEval task tag {row['tag']!r} "
                                   f"(known: {', '.join(TASKS.values())})")
            per_task[TAG_TO_TASK[row["tag"]]].append(bool(row["correct"]))  # 0 / 1 are admitted too
            prompt = row.get("metadata", row.get("prompt"))
            prompts.add(prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True))
    num_images = sum(len(v) for v in per_task.values())
    if num_images == 0:
        raise GenEvalError(f"{path} holds no results")
    scores = {name: (sum(v) / len(v) if v else None) for name, v in per_task.items()}
    present = [s for s in scores.values() if s is not None]
    summary = dict(scores)
    summary["overall"] = sum(present) / len(present)
    summary["num_images"] = num_images
    summary["num_prompts"] = len(prompts)
    summary.update({f"n_{name}": len(v) for name, v in per_task.items()})
    summary["missing_tasks"] = [name for name, v in per_task.items() if not v]
    return summary


def format_summary(summary: dict) -> str:
    """A small text table of `summarize`'s result, Table 2's column order."""
    lines = [f"{'task':<12} {'score':>7} {'images':>7}"]
    for name in TASKS:
        score = summary[name]
        lines.append(f"{name:<12} {'-' if score is None else f'{score:.4f}':>7} {summary[f'n_{name}']:>7}")
    lines.append(f"{'overall':<12} {summary['overall']:>7.4f} {summary['num_images']:>7}")
    if summary["missing_tasks"]:
        lines.append(f"warning: no results for {', '.join(summary['missing_tasks'])}; overall averages the others")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.geneval", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="write a run's images in GenEval's layout")
    p.add_argument("run_dir")
    p.add_argument("--prompts", default=None,
                   help=f"GenEval's prompts/evaluation_metadata.jsonl (default ${PROMPTS_ENV})")
    p.add_argument("--out", required=True)
    p.add_argument("--samples-per-prompt", type=int, default=SAMPLES_PER_PROMPT)
    p = sub.add_parser("score", help="run GenEval's evaluate_images.py on a layout, then summarise")
    p.add_argument("layout_dir")
    # Defaults: the environment variables configs/eval/geneval.yaml reads too.
    p.add_argument("--geneval-dir", default=os.environ.get("GENEVAL_DIR"),
                   help="a djghosh13/geneval checkout (default $GENEVAL_DIR)")
    p.add_argument("--python", default=os.environ.get("GENEVAL_PYTHON", "python"),
                   help="the python of GenEval's environment (default $GENEVAL_PYTHON or python)")
    p.add_argument("--detector", default=os.environ.get("GENEVAL_DETECTOR"),
                   help=f"folder holding {DETECTOR_NAME}.pth (default $GENEVAL_DETECTOR)")
    p.add_argument("--outfile", required=True)
    p.add_argument("--force", action="store_true", help="score again even if outfile is complete")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p = sub.add_parser("summarize", help="scores from a GenEval results.jsonl")
    p.add_argument("results")
    p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    try:
        if args.command == "export":
            done = export_layout(args.run_dir, read_prompts(args.prompts), args.out, args.samples_per_prompt)
            print(f"{args.out}: {done['prompts']} prompts, {done['images']} images "
                  f"({done['linked']} linked, {done['copied']} copied, {done['kept']} already there)")
            return 0
        if args.command == "score":
            run_evaluation(args.layout_dir, args.outfile, args.geneval_dir, args.python, args.detector,
                           force=args.force)
            results = args.outfile
        else:
            results = args.results
        summary = summarize(results)
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
        return 0
    except (GenEvalError, ConfigError, OSError) as e:
        # One line: a failed scorer's stderr has already been shown as it ran.
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
