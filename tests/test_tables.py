"""Tests of the paper's transcribed tables and of eval/tables.py (paper vs ours)."""
import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from eval import tables as T

ROOT = Path(__file__).resolve().parents[1]


def paper_row(table_no, key):
    df = T.load_paper_table(table_no)
    rows = df[df["key"] == key]
    assert len(rows) == 1, f"table {table_no}: expected one row with key {key}"
    return rows.iloc[0]


# ---------------------------------------------------------------- transcription

def test_row_counts_and_unique_keys():
    counts = {1: 7 + 3 * 11, 2: 4 + 7, 3: 5, 4: 5, 5: 4}
    for n, count in counts.items():
        df = T.load_paper_table(n)
        assert len(df) == count, f"table {n}"
        assert df["key"].is_unique, f"table {n}: duplicate keys"
        for col in T.ID_COLUMNS[n] + [m for m in T.METRICS[n] if m not in T.OURS_ONLY.get(n, ())]:
            assert col in df.columns, f"table {n}: column {col}"


def test_missing_cells_stay_missing():
    hita = paper_row(1, "ref/hita_2b")
    for col in ["latency_gpu_s", "latency_cpu_s", "flops_T", "speed"]:
        assert math.isnan(hita[col])
    assert (hita["params"], hita["fid"], hita["is"]) == ("2B", 2.59, 281.9)


# (table, key, column, delta printed in the paper as a subscript, row it is relative to)
PRINTED_DELTAS = [
    (1, "mar_h/step16/gtr", "flops_T", -47.18, "mar_h/64/mar"),
    (1, "mar_h/step16/gtr", "fid", 0.00, "mar_h/64/mar"),
    (1, "mar_h/step16/gtr", "is", 5.3, "mar_h/64/mar"),
    (1, "mar_h/step16/gtr", "latency_gpu_s", -0.59, "mar_h/64/mar"),
    (1, "mar_h/step16/gtr", "latency_cpu_s", -76.73, "mar_h/64/mar"),
    (1, "mar_h/step8/gtr", "flops_T", -54.25, "mar_h/64/mar"),
    (1, "mar_h/step8/gtr", "fid", 0.57, "mar_h/64/mar"),
    (1, "mar_h/step8/gtr", "is", -13.5, "mar_h/64/mar"),
    (1, "mar_b/step8/mar", "fid", 10.80, "mar_b/64/mar"),
    (1, "mar_b/step8/mar", "is", -100.2, "mar_b/64/mar"),
    (1, "mar_b/step8/mar", "flops_T", -9.65, "mar_b/64/mar"),
    (1, "mar_b/step8/disa", "flops_T", -11.03, "mar_b/64/mar"),
    (1, "mar_b/step8/disa", "latency_cpu_s", -21.31, "mar_b/64/mar"),
    (1, "mar_l/step16/lazymar", "latency_cpu_s", -38.61, "mar_l/64/mar"),
    (1, "mar_l/step16/lazymar", "flops_T", -23.40, "mar_l/64/mar"),
    (1, "mar_l/step16/gtr", "fid", -0.01, "mar_l/64/mar"),
    (1, "mar_l/step8/halton", "is", -140.7, "mar_l/64/mar"),
    (2, "lightgen/step16/gtr", "latency_gpu_s", -0.72, "lightgen/32/lightgen"),
    (2, "lightgen/step16/gtr", "two_obj", -0.02, "lightgen/32/lightgen"),
    (2, "lightgen/step16/gtr", "colors", 0.03, "lightgen/32/lightgen"),
    (2, "lightgen/step16/gtr", "overall", 0.01, "lightgen/32/lightgen"),
    (2, "lightgen/step12/lazymar", "single_obj", -0.01, "lightgen/32/lightgen"),
    (2, "lightgen/step12/lazymar", "counting", -0.02, "lightgen/32/lightgen"),
    (2, "lightgen/step12/lazymar", "color_attr", -0.08, "lightgen/32/lightgen"),
    (2, "lightgen/step12/gtr", "position", -0.01, "lightgen/32/lightgen"),
]
# Table 3 is printed relative to MAR-H at 64 steps (Table 1): every delta of every row.
T3_DELTAS = {  # latency_gpu_s, latency_cpu_s, flops_T, fid, is
    "table3/none": (-0.22, -28.61, -19.39, 0.05, -1.8),
    "table3/gtr_enc": (-0.52, -69.39, -42.33, 0.11, 1.0),
    "table3/gtr_diff": (-0.38, -51.08, -30.60, 0.00, 1.3),
    "table3/gtr_enc+gtr_diff": (-0.59, -77.64, -47.24, 0.06, 4.3),
    "table3/gtr_enc+gtr_diff+fts": (-0.59, -76.73, -47.18, 0.00, 5.3),
}
T4_DELTAS = {  # flops_T, fid, is
    "table4/random": (-47.18, 0.05, 5.4),
    "table4/low_freq": (-47.18, 0.05, 2.4),
    "table4/full_enhanced": (-46.48, 0.06, 2.5),
    "table4/high_freq": (-47.18, 0.00, 5.3),
}


@pytest.mark.parametrize("table_no,key,col,printed,base", PRINTED_DELTAS)
def test_printed_deltas_recomputed(table_no, key, col, printed, base):
    row, ref = paper_row(table_no, key), paper_row(table_no, base)
    assert row[col] - ref[col] == pytest.approx(printed, abs=1e-6)


def test_table3_and_table4_deltas_against_mar_h_64():
    base = paper_row(1, "mar_h/64/mar")
    for key, printed in T3_DELTAS.items():
        row = paper_row(3, key)
        for col, delta in zip(["latency_gpu_s", "latency_cpu_s", "flops_T", "fid", "is"], printed):
            assert row[col] - base[col] == pytest.approx(delta, abs=1e-6), (key, col)
    for key, printed in T4_DELTAS.items():
        row = paper_row(4, key)
        for col, delta in zip(["flops_T", "fid", "is"], printed):
            assert row[col] - base[col] == pytest.approx(delta, abs=1e-6), (key, col)


def test_table3_speed_is_flops_ratio():
    df = T.load_paper_table(3)
    assert ((64.52 / df["flops_T"] - df["speed"]).abs() <= 0.01).all()


def test_table1_and_table2_speed_bases():
    t1 = T.load_paper_table(1)
    mar = t1[t1["key"].str.startswith("mar_")]
    base = mar["key"].str.split("/").str[0].map(lambda m: paper_row(1, f"{m}/64/mar")["flops_T"])
    off = mar[(base / mar["flops_T"] - mar["speed"]).abs() > 0.011]
    # The paper's own slip: 32.75 / 5.77 = 5.68, printed 5.37 (MAR-B's value on that line).
    assert list(off["key"]) == ["mar_l/step8/lazymar"]
    t2 = T.load_paper_table(2)
    light = t2[t2["key"].str.startswith("lightgen/")]
    ratio = 1.03 / light["latency_gpu_s"]
    assert ((ratio - light["speed"]).abs() / light["speed"] < 0.02).all()


def test_rows_the_paper_repeats_agree():
    h64, gtr = paper_row(1, "mar_h/64/mar"), paper_row(1, "mar_h/step16/gtr")
    origin = paper_row(4, "mar_h/64/mar")
    assert (origin["flops_T"], origin["fid"], origin["is"]) == (h64["flops_T"], h64["fid"], h64["is"])
    full = paper_row(3, "table3/gtr_enc+gtr_diff+fts")
    for col in ["latency_gpu_s", "latency_cpu_s", "flops_T", "speed", "fid", "is"]:
        assert full[col] == gtr[col], col
    for table_no, key in [(4, "table4/high_freq"), (5, "table5/gtr")]:
        row = paper_row(table_no, key)
        assert (row["fid"], row["is"]) == (gtr["fid"], gtr["is"])


def test_table3_flags_match_keys():
    df = T.load_paper_table(3)
    for _, row in df.iterrows():
        flags = [row["gtr_encdec"], row["gtr_diffusion"], row["fts"]]
        assert all(isinstance(f, (bool,)) or type(f).__name__ == "bool_" for f in flags)
        parts = [p for p, on in zip(["gtr_enc", "gtr_diff", "fts"], flags) if on]
        assert row["key"] == "table3/" + ("+".join(parts) or "none")


# ---------------------------------------------------------------- our runs

def record(key, table=1, **measured):
    rec = {"table": table, "key": key, "model": "MAR-H", "method": key.split("/")[-1],
           "config": {"num_iter": 16}, "command": "python sample.py", "git_commit": "abc123",
           "torch_version": "2.4.0", "device": "cpu", "dtype": "float32", "batch_size": 8,
           "num_images": 16, "baseline": "mar_h/64/mar"}  # experiments name the row a speed divides by
    rec.update(measured)
    return rec


def write(path, rec):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec) if not isinstance(rec, str) else rec)


@pytest.fixture
def runs_dir(tmp_path):
    write(tmp_path / "a.json", record("mar_h/64/mar", flops_T=65.177, flops_paper_convention_T=64.55,
                                      fid=1.60, latency_gpu_s=None))
    write(tmp_path / "b.json", record("mar_h/step16/gtr", flops_T=17.0, fid=1.70, **{"is": 300.0}))
    write(tmp_path / "c.json", record("mar_h/step32/gtr", flops_T=26.78, fid=1.62))
    write(tmp_path / "sub" / "d.json", record("table3/gtr_enc+gtr_diff+fts", table=3, flops_T=16.0))
    return tmp_path


def test_load_runs_recursive(runs_dir):
    runs = T.load_runs(runs_dir)
    assert len(runs) == 4
    assert runs["source"].str.endswith("d.json").any()
    assert math.isnan(runs.set_index("key").loc["mar_h/64/mar", "latency_gpu_s"])


def test_join_table1_deltas_and_missing(runs_dir):
    df = T.join_with_paper(1, T.load_runs(runs_dir)).set_index("key")
    gtr = df.loc["mar_h/step16/gtr"]
    assert gtr["status"] == T.STATUS_BOTH
    assert gtr["fid_delta"] == pytest.approx(1.70 - 1.59)
    assert gtr["is_delta"] == pytest.approx(300.0 - 304.4)
    assert gtr["flops_T_delta"] == pytest.approx(17.0 - 17.34)
    assert gtr["speed_ours"] == pytest.approx(65.177 / 17.0)
    assert gtr["speed_delta"] == pytest.approx(65.177 / 17.0 - 3.72, abs=1e-5)
    assert gtr["speed_basis"] == "flops_T"
    assert math.isnan(gtr["latency_gpu_s_ours"]) and math.isnan(gtr["latency_gpu_s_delta"])
    assert gtr["latency_gpu_s_paper"] == 0.22
    base = df.loc["mar_h/64/mar"]
    assert base["speed_ours"] == pytest.approx(1.0)
    assert base["flops_paper_convention_T_delta"] == pytest.approx(64.55 - 64.52)
    untouched = df.loc["mar_b/64/mar"]
    assert untouched["status"] == T.STATUS_PAPER
    assert untouched[[c for c in df.columns if c.endswith(("_ours", "_delta"))]].isna().all()
    assert math.isnan(df.loc["ref/hita_2b", "flops_T_paper"])


def test_join_marks_rows_the_paper_lacks(runs_dir):
    runs = T.load_runs(runs_dir)
    df = T.join_with_paper(1, runs).set_index("key")
    extra = df.loc["mar_h/step32/gtr"]
    assert extra["status"] == T.STATUS_OURS
    assert math.isnan(extra["fid_paper"]) and math.isnan(extra["fid_delta"])
    assert extra["speed_ours"] == pytest.approx(65.177 / 26.78)
    assert len(df) == 41
    # A table-3 record with a Table 3 key does not leak into Table 1.
    assert "table3/gtr_enc+gtr_diff+fts" not in df.index


def test_join_other_tables_use_the_mar_h_baseline(runs_dir):
    runs = T.load_runs(runs_dir)
    t3 = T.join_with_paper(3, runs).set_index("key")
    full = t3.loc["table3/gtr_enc+gtr_diff+fts"]
    assert full["speed_ours"] == pytest.approx(65.177 / 16.0)
    assert math.isnan(t3.loc["table3/none", "speed_ours"])
    t4 = T.join_with_paper(4, runs).set_index("key")
    assert t4.loc["mar_h/64/mar", "fid_delta"] == pytest.approx(0.01)
    t5 = T.join_with_paper(5, None)
    assert t5["fid_ours"].isna().all() and len(t5) == 4


def test_demo_runs_are_never_compared_with_the_paper(runs_dir):
    write(runs_dir / "demo.json", record("mar_b/64/mar", table="demo", fid=40.0))
    runs = T.load_runs(runs_dir)
    assert T.join_with_paper(1, runs).set_index("key").loc["mar_b/64/mar", "status"] == T.STATUS_PAPER
    demo = T.ours_table(runs, "demo")
    assert list(demo["fid"]) == [40.0] and "flops_T" not in demo.columns


def test_conflicting_duplicates_are_refused(runs_dir):
    write(runs_dir / "e.json", record("mar_h/64/mar", fid=1.70))
    with pytest.raises(ValueError, match="mar_h/64/mar.*'fid'"):
        T.join_with_paper(1, T.load_runs(runs_dir))


@pytest.mark.parametrize("bad,message", [
    ({k: v for k, v in record("x/y").items() if k != "git_commit"}, "missing required field.*git_commit"),
    (record("x/y", fid=1.0, speed=3.0), "speed"),
    ({**record("x/y", fid=1.0), "batch_size": "8"}, "batch_size"),
    ({**record("x/y", fid=1.0), "table": 7}, "table"),
    (record("x/y", fid="1.0"), "fid"),
    (record("x/y"), "no measurement"),
    ([1, 2], "JSON object"),
    ("{not json", "not valid JSON"),
])
def test_malformed_record_names_the_file(tmp_path, bad, message):
    write(tmp_path / "broken.json", bad)
    with pytest.raises(ValueError, match=message) as err:
        T.load_runs(tmp_path)
    assert "broken.json" in str(err.value)


def test_missing_runs_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        T.load_runs(tmp_path / "nowhere")


def test_join_rejects_unknown_table():
    with pytest.raises(ValueError, match="table"):
        T.join_with_paper(6, None)


# ---------------------------------------------------------------- output

def test_to_markdown_formats():
    df = pd.DataFrame({"key": ["a|b", "c"], "fid_ours": [1.23456, float("nan")],
                       "fid_delta": [0.05, -0.0000001], "fts": [True, False]})
    md = T.to_markdown(df).splitlines()
    assert md[0] == "| key | fid_ours | fid_delta | fts |"
    assert md[2] == "| a\\|b | 1.235 | +0.05 | ✓ |"
    assert md[3] == "| c | – | 0 | ✗ |"


def test_plot_created(tmp_path, runs_dir):
    path = T.plot_fid_vs_flops(T.join_with_paper(1, T.load_runs(runs_dir)), tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="flops_T_paper"):
        T.plot_fid_vs_flops(pd.DataFrame({"key": ["mar_h/64/mar"]}), tmp_path / "q.png")


def test_script_without_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("tables_script", ROOT / "scripts" / "tables.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main([f"records={tmp_path / 'out'}"])
    assert "no run records" in capsys.readouterr().out
    out = tmp_path / "out"
    for n in T.TABLES:
        assert (out / f"table{n}.md").is_file()
        csv = pd.read_csv(out / f"table{n}.csv")
        assert csv[[c for c in csv.columns if c.endswith("_ours")]].isna().all().all()
    assert (out / "fid_vs_flops.png").is_file()
    assert "– | – |" in (out / "table5.md").read_text()
