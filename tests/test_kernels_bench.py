"""bench/kernels.py --quick on one block case: every method and mode is warmed up, measured for memory
and timed in the shared interleaved rounds, and the JSON and the table say so. No speed is asserted."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_block_case_times_every_method_in_shared_rounds(tmp_path):
    out = tmp_path / "kernels.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "kernels.py"), "--quick", "--section", "block",
                          "--cases", "dit-s2-qk", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (case,) = json.loads(out.read_text())["block"]
    (op,) = case["ops"]
    assert case["key"] == "dit-s2-qk" and op["op"] == "qk_norm"
    results = {result["method"]: result for result in op["results"]}
    assert set(results) == {"imm_ext", "eager", "compile"}
    for result in results.values():
        for mode in ("forward", "forward_backward"):
            measured = result[mode]
            # the same number of rounds for every method: one call of each per round
            assert measured["reps"] == results["imm_ext"][mode]["reps"] >= 1
            assert 0 < measured["ms"] <= measured["worst_ms"] and measured["warmup_s"] > 0
            assert measured["peak_extra_mb"] > 0
    assert op["best_baseline"]["forward"] in ("eager", "compile")
    assert "| qk_norm | imm_ext |" in run.stdout and "interleaved rounds" in run.stdout
