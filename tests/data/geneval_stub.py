"""Stand-in for GenEval's evaluation/evaluate_images.py: same CLI, same results format, fake verdicts."""
import argparse, json, os, re, sys
parser = argparse.ArgumentParser()
parser.add_argument("imagedir")
parser.add_argument("--outfile", default="results.jsonl")
parser.add_argument("--model-config", default=None)
parser.add_argument("--model-path", default="./")
parser.add_argument("--options", nargs="*", default=[])
args = parser.parse_args()
with open(os.path.join(os.path.dirname(__file__), "calls.log"), "a") as log:
    log.write(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd()}) + "\n")
if os.environ.get("STUB_FAIL"):
    print("loading Mask2Former", file=sys.stderr)
    print("AssertionError: DEVICE == cuda", file=sys.stderr)
    sys.exit(3)
rows = []
for sub in sorted(os.listdir(args.imagedir)):
    folder = os.path.join(args.imagedir, sub)
    if not os.path.isdir(folder) or not sub.isdigit():
        continue
    with open(os.path.join(folder, "metadata.jsonl")) as fp:
        metadata = json.load(fp)
    for name in sorted(os.listdir(os.path.join(folder, "samples"))):
        if re.match(r"\d+\.png", name):
            rows.append({"filename": os.path.join(folder, "samples", name), "tag": metadata["tag"],
                         "prompt": metadata["prompt"], "correct": name == "0000.png", "reason": "",
                         "metadata": json.dumps(metadata), "details": "{}"})
if os.path.dirname(args.outfile):
    os.makedirs(os.path.dirname(args.outfile), exist_ok=True)
with open(args.outfile, "w") as fp:
    fp.write("\n".join(json.dumps(r) for r in rows) + "\n")
