"""bench/models.py on one small block: every precision, mode and variant is timed and checked against
stock, and the JSON keeps each call's time beside the median, the worst and both speedups."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_models_bench_times_every_mode_and_precision(tmp_path):
    out = tmp_path / "models.json"
    subprocess.run([sys.executable, "models.py", "--cases", "block", "--batch", "1", "--precision", "float32,bf16",
                    "--reps", "2", "--no-compile", "--variants", "imm_ext", "--out", str(out)],
                   cwd=ROOT / "bench", check=True, capture_output=True, timeout=600)
    report = json.loads(out.read_text())
    rows = {(r["precision"], r["mode"], r["variant"]): r for r in report["rows"]}
    modes = ("forward", "train step (fresh grads)", "train step (accumulated grads)")
    assert set(rows) == {(p, m, v) for p in ("float32", "bf16") for m in modes for v in ("stock", "imm_ext")}
    for row in rows.values():
        assert len(row["calls_ms"]) == 2 and row["worst_ms"] == max(row["calls_ms"]) >= row["ms"] > 0
        stock = rows[row["precision"], row["mode"], "stock"]
        assert abs(row["speedup_vs_stock"] - stock["ms"] / row["ms"]) < 1e-9
        assert abs(row["worst_speedup_vs_stock"] - stock["worst_ms"] / row["worst_ms"]) < 1e-9
    agreement = {c["precision"]: c["max_abs_diff_vs_stock"] for c in report["agreement"] if c["variant"] == "imm_ext"}
    assert agreement["float32"] < 1e-4 and agreement["bf16"] < 5e-2


def test_models_bench_refuses_an_unknown_mode():
    done = subprocess.run([sys.executable, "models.py", "--modes", "backward"], cwd=ROOT / "bench",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "unknown mode backward" in done.stderr


def test_the_speedup_ceiling_is_stocks_step_over_imm_exts_matmul_and_attention_share_of_its_own():
    sys.path.insert(0, str(ROOT / "bench"))
    from models import speedup_ceilings

    def profile(matmul, attention, rest):
        return {"matmul": matmul, "attention": attention, "rest": rest}, []

    setting = "dit batch 8 float32"
    profiles = {(setting, "eager", "stock"): profile(700.0, 150.0, 150.0),
                (setting, "eager", "imm_ext"): profile(690.0, 110.0, 200.0),  # 80% matmul and attention
                (setting, "compile", "imm_ext"): profile(700.0, 150.0, 50.0)}  # no stock median: no ceiling
    medians = {(setting, "eager", "stock"): 1200.0, (setting, "eager", "imm_ext"): 1000.0,
               (setting, "compile", "imm_ext"): 900.0}
    assert speedup_ceilings(profiles, medians) == {(setting, "eager"): 1200.0 / 800.0}
