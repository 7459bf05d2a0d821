"""bench/quality.py --quick: trains both methods side by side with the trainer, scores every checkpoint of
interest at every sampler step count, and writes the results JSON (every number, each run's config and
times, the machine) and its figures; with --ablation, a variant set's JSON, table and bar figure. No
quality threshold is asserted: the smoke runs train for seconds."""
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_quick_study_writes_its_results_and_figures(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--quick", "--out-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (path,) = tmp_path.glob("quality-digits-*.json")
    results = json.loads(path.read_text())
    assert results["dataset"] == "digits" and results["budgets_s"] == [2.0, 4.0]
    assert set(results["steps_per_s"]) == {"imm", "flow_matching"} and all(v > 0 for v in results["steps_per_s"].values())
    for budget in ("2.0", "4.0"):
        scores = results["seeds"]["0"][budget]
        assert set(scores["imm"]["imm"]) == {"1", "2", "4", "8"}
        for solver in ("euler", "heun"):
            assert set(scores["flow_matching"][solver]) == {str(s) for s in results["fm_steps"]}
        assert all(value["fd"] >= 0 for value in scores["imm"]["imm"].values())
        # every score compares as many generated as real samples (the run's own eval settings don't leak in)
        assert {value["real_samples"] for value in scores["flow_matching"]["heun"].values()} == {results["samples"]}
    for method in ("imm", "flow_matching"):
        assert results["runs"]["0"][method]["wall_s"] > 0 and results["runs"]["0"][method]["cpu_s"] > 0
        assert "method:" in results["config"][method]
    assert "kind: flow_matching" in results["config"]["flow_matching"]
    # each method at its own tuned learning rate on digits (study_runs.TUNED)
    assert "lr: 0.002" in results["config"]["flow_matching"] and "lr: 0.001" in results["config"]["imm"]
    assert results["real_vs_real_fd"] > 0 and results["machine"]["cores"] >= 1
    assert results["table"].count("\n| 2 s |") == 1 and "IMM 2 / FM" in results["table"]
    for figure in results["figures"].values():
        with Image.open(figure) as image:
            assert image.format == "PNG" and image.size[0] > 300


def test_quick_ablation_trains_every_variant_for_the_same_steps_and_draws_the_bars(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--ablation", "particles", "--quick",
                          "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (path,) = tmp_path.glob("ablation-particles-digits-*.json")
    results = json.loads(path.read_text())
    assert results["mode"] == "steps" and list(results["variants"].values())[0] == "M=4 (preset)"
    assert len(set(results["steps"].values())) == 1  # the ablations change nothing that costs time
    assert {"method.particles=1", "method.particles=8"} <= {o for v in results["overrides"].values() for o in v}
    for job in results["variants"]:
        scores = results["seeds"]["0"][job]
        assert set(scores["scores"]["imm"]) == {"1", "2", "4", "8"}
        assert scores["headline"] == {"imm_1": scores["scores"]["imm"]["1"]["fd"],
                                      "imm_2": scores["scores"]["imm"]["2"]["fd"]}
        assert f"train.steps={results['steps'][job]}" in results["runs"]["0"][job]["command"]
    assert results["table"].count("\n") == 1 + len(results["variants"]) and "M=8" in results["table"]
    with Image.open(results["figure"]) as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_equal_time_speeds_come_from_one_shared_load_scaled_by_the_side_by_side_presets(monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    import ablation

    jobs = {"imm": [], "imm-wide": ["model.options.hidden_size=96"], "fm": ablation.FM,
            "fm-wide": [*ablation.FM, "model.options.hidden_size=96"]}
    calls = []

    def fake_speeds(dataset, timed, steps):  # all at once: everything at a quarter of its pair speed
        calls.append(sorted(timed))
        rates = {"imm": 10.0, "imm-wide": 5.0, "fm": 14.0, "fm-wide": 6.0}
        return {job: rates[job] / (4 if len(timed) == 4 else 1) for job in timed}

    monkeypatch.setattr(ablation, "measure_speeds", fake_speeds)
    speeds = ablation.equal_load_speeds("digits", jobs, 200)
    assert calls == [sorted(jobs), ["fm", "imm"]]
    assert speeds == {"imm": 10.0, "imm-wide": 5.0, "fm": 14.0, "fm-wide": 6.0}
