"""bench/quality.py --quick: trains both methods side by side with the trainer, scores every checkpoint of
interest at every sampler step count, and writes the results JSON (every number, each run's config and
times, the machine) and its figures; with --ablation, a variant set's JSON, table and bar figure. No
quality threshold is asserted: the smoke runs train for seconds."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from imm_ext.train.presets import TRAINING_PRESETS

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

    # --merge: another seed's file joins this one (here the same numbers under seed 1); a repeated seed fails
    other = {**results, "seeds": {"1": results["seeds"]["0"]}, "runs": {"1": results["runs"]["0"]}}
    (tmp_path / "seed-1.json").write_text(json.dumps(other))
    merge = [sys.executable, str(ROOT / "bench" / "quality.py"), "--out-dir", str(tmp_path / "merged"), "--merge"]
    run = subprocess.run([*merge, str(path), str(tmp_path / "seed-1.json")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (merged_path,) = (tmp_path / "merged").glob("quality-digits-*.json")
    merged = json.loads(merged_path.read_text())
    assert set(merged["seeds"]) == {"0", "1"} and "2 seed(s)" in merged["table"]
    fd = results["seeds"]["0"]["2.0"]["imm"]["imm"]["1"]["fd"]
    assert f"| 2 s | {fd:.2f} ({fd:.2f}-{fd:.2f}) |" in merged["table"]
    assert merged["figures"]["samples"] == results["figures"]["samples"]
    assert all(Path(f).exists() for f in merged["figures"].values())
    run = subprocess.run([*merge, str(path), str(path)], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "repeats seed(s) ['0']" in run.stderr


def test_a_study_rerun_in_its_runs_folder_continues_without_retraining(tmp_path):
    """An interrupted study loses no training: given the same --runs-dir, finished runs are reused, an
    unfinished one resumes from its newest checkpoint (exactly: the same numbers), and the measured
    speeds are kept so both runs train to the same steps."""
    runs = tmp_path / "runs"
    command = [sys.executable, str(ROOT / "bench" / "quality.py"), "--quick", "--runs-dir", str(runs)]
    first = subprocess.run([*command, "--out-dir", str(tmp_path / "first")], capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (runs / "speeds.json").is_file()
    # flow matching killed after an earlier checkpoint: its newest checkpoint and summary gone
    checkpoints = sorted((runs / "flow_matching-0" / "checkpoints").glob("step-*.pt"))
    assert len(checkpoints) >= 2
    checkpoints[-1].unlink()
    (runs / "flow_matching-0" / "summary.json").unlink()
    imm_log = (runs / "imm-0" / "log.jsonl").read_text()
    imm_scores = sorted((runs / "imm-0" / "scores").glob("*.json"))
    assert len(imm_scores) == 2  # one per budget
    for path in imm_scores:  # marked, so that a file read back (not rewritten) shows
        stored = json.loads(path.read_text())
        stored["scores"]["imm"]["1"]["marker"] = 1.0
        path.write_text(json.dumps(stored))
    fm_scores = runs / "flow_matching-0" / "scores" / f"{checkpoints[-1].stem}-flow_matching-200.json"
    fm_before = json.loads(fm_scores.read_text())
    fm_scores.write_text(json.dumps({"checkpoint_sha256": "0" * 64, "scores": {}}))  # of another checkpoint
    second = subprocess.run([*command, "--out-dir", str(tmp_path / "second")], capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    before, after = (json.loads(next((tmp_path / name).glob("quality-digits-*.json")).read_text())
                     for name in ("first", "second"))
    assert after["steps_per_s"] == before["steps_per_s"] and after["steps"] == before["steps"]
    assert after["runs"]["0"]["imm"]["reused"] and "reused" not in after["runs"]["0"]["flow_matching"]
    assert (runs / "imm-0" / "log.jsonl").read_text() == imm_log
    assert checkpoints[-1].is_file()
    # IMM's scores read back from its run folder; flow matching's, kept for other bytes, scored again
    assert all(after["seeds"]["0"][budget]["imm"]["imm"]["1"]["marker"] == 1.0 for budget in after["seeds"]["0"])
    rescored = json.loads(fm_scores.read_text())
    assert rescored["checkpoint_sha256"] == hashlib.sha256(checkpoints[-1].read_bytes()).hexdigest()
    assert rescored["scores"] == fm_before["scores"]
    for budget in after["seeds"]["0"].values():
        budget["imm"]["imm"]["1"].pop("marker")
    assert after["seeds"] == before["seeds"]


def test_quick_ablation_trains_every_variant_for_the_same_steps_and_draws_the_bars(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--ablation", "particles", "--quick",
                          "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (path,) = tmp_path.glob("ablation-particles-digits-*.json")
    results = json.loads(path.read_text())
    assert results["mode"] == "steps" and list(results["variants"].values())[0] == "M=4 (preset)"
    assert "--ablation" in results["command"] and "particles" in results["command"]
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


def test_equal_time_speeds_come_from_pairs_scaled_by_the_side_by_side_presets(monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    import ablation

    jobs = {"imm": [], "imm-wide": ["model.options.hidden_size=96"], "fm": ablation.FM,
            "fm-wide": [*ablation.FM, "model.options.hidden_size=96"]}
    calls = []

    def fake_speeds(dataset, timed, steps):  # beside a preset, both run at half their pair speed
        calls.append(sorted(timed))
        rates = {"imm": 10.0, "imm-wide": 5.0, "fm": 14.0, "fm-wide": 6.0}
        presets_only = sorted(timed) == ["fm", "imm"]
        return {job: rates[job] / (1 if presets_only else 2) for job in timed}

    monkeypatch.setattr(ablation, "measure_speeds", fake_speeds)
    speeds = ablation.equal_load_speeds("digits", jobs, 200)
    assert calls == [["fm", "imm"], ["imm", "imm-wide"], ["fm", "fm-wide"]]
    assert speeds == {"imm": 10.0, "imm-wide": 5.0, "fm": 14.0, "fm-wide": 6.0}


def test_an_ablation_reuses_an_equal_time_studys_speeds_only_where_steps_are_equal():
    sys.path.insert(0, str(ROOT / "bench"))
    import ablation
    import pytest

    study = {"imm": 13.9, "flow_matching": 18.6}
    jobs = {"m-4-preset": [], "m-1": ["method.particles=1"], "fm": ablation.FM}
    assert ablation.stored_speeds(study, jobs, "steps") == {"m-4-preset": 13.9, "m-1": 13.9, "fm": 18.6}
    own = {"m-4-preset": 12.0, "m-1": 11.0, "fm": 17.0, "other": 1.0}
    assert ablation.stored_speeds(own, jobs, "time") == {"m-4-preset": 12.0, "m-1": 11.0, "fm": 17.0}
    with pytest.raises(SystemExit, match="no speed for fm, m-1, m-4-preset"):
        ablation.stored_speeds(study, jobs, "time")


def test_a_variant_subset_keeps_the_presets_and_the_network_set_fits_the_dataset():
    sys.path.insert(0, str(ROOT / "bench"))
    import ablation
    import pytest

    _, network = ablation.variant_sets("fashion-mnist")["network"]
    chosen = ablation.chosen_variants(network, ["imm-dit-patch-4", "fm-dit-patch-4"])
    assert list(chosen) == ["IMM UNet (preset)", "FM UNet (preset)", "IMM DiT patch 4", "FM DiT patch 4"]
    preset = TRAINING_PRESETS["fashion-mnist"].model
    assert preset.kind == "unet" and len(preset.options["channel_mult"]) == 3  # 32, 16, 8 for padded images
    assert chosen["IMM DiT patch 4"][0] == "model.kind=dit"  # the alternative names its whole network
    assert "channel_mult: [1, 2]" in ablation.variant_sets("digits")["network"][1]["IMM UNet"][1]
    assert ablation.variant_sets("digits")["network"][1]["FM DiT patch 4 (preset)"] == [
        *ablation.FM, "optimizer.lr=2e-3"]  # digits' tuned baseline; Fashion-MNIST has none
    assert chosen["FM UNet (preset)"] == ablation.FM
    assert ablation.chosen_variants(network, None) == network
    with pytest.raises(SystemExit, match="no variant imm-resnet"):
        ablation.chosen_variants(network, ["imm-resnet"])


def test_variant_labels_name_the_datasets_own_preset_and_no_variant_repeats_it():
    sys.path.insert(0, str(ROOT / "bench"))
    import ablation
    from imm_ext.train.config_io import apply_overrides

    for dataset in ("digits", "fashion-mnist"):
        preset = TRAINING_PRESETS[dataset]
        sets = ablation.variant_sets(dataset)
        method = preset.method
        assert list(sets["particles"][1])[0] == f"M={method.particles} (preset)"
        assert list(sets["noise"][1])[0] == f"eps_t={method.eps_t:g} T={method.T:g} (preset)"
        assert list(sets["mapping"][1])[0] == f"{method.mapping} k={method.k} (preset)"
        for name, (_, variants) in sets.items():
            resolved = [apply_overrides(preset, overrides) for overrides in variants.values()]
            assert len({repr(config) for config in resolved}) == len(resolved), (dataset, name)  # all differ
    fashion = ablation.variant_sets("fashion-mnist")
    assert "M=4" in fashion["particles"][1] and "M=2" not in fashion["particles"][1]
    assert fashion["noise"][1]["T=0.994"] == ["method.T=0.994"] and "T=0.999" not in fashion["noise"][1]
    assert ablation.variant_sets("digits")["decay"][1]["FM lr 4e-3 cosine"][1] == "optimizer.lr=4e-3"
