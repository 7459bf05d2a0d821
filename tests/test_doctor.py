"""`imm-ext doctor` and the one-shot GPU check: the report covers every backend this machine has (every
CPU instruction-set build, the emulated CUDA kernels), passes here, and fails loudly when an op is wrong;
bench/gpu_check.sh plans every stage and reports each one, also when it fails or runs out of time."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import imm_ext
from imm_ext import health_check
from imm_ext.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_doctor_checks_every_op_on_every_backend(capsys):
    assert main(["doctor", "--json", "--no-speed"]) == 0
    report = json.loads(capsys.readouterr().out)
    isa = imm_ext.build_info()["cpu_isa"]
    expected = {f"cpu ({name})" for name in health_check.ISAS[:health_check.ISAS.index(isa) + 1]}
    expected.add("cuda emulated on the cpu")
    assert expected <= set(report["backends"]) and report["ok"]
    for name, backend in report["backends"].items():
        checked = {(c["op"], c["dtype"]) for c in backend["checks"]}
        assert checked == {(c.name, d) for c in health_check.CHECKS for d in health_check.DTYPES}, name
        assert all(c["ok"] and c["max_error"] <= c["tolerance"] for c in backend["checks"]), name
    assert report["build"]["emulated_cuda"] and report["build"]["torch"] == torch.__version__


def test_a_wrong_op_fails_the_doctor(monkeypatch, capsys):
    wrong = health_check.OpCheck("gelu_tanh(wrong)", lambda g, s: [torch.randn(4, 9, generator=g, dtype=torch.float64)],
                                 lambda x: imm_ext.ops.gelu_tanh(x) * 1.1, imm_ext.ops.gelu_tanh_reference, (0,))
    monkeypatch.setattr(health_check, "CHECKS", [wrong])
    assert health_check.main(["--backend", "cpu", "--no-speed"]) == 1
    report = health_check.check_backend("cpu", with_speed=False)
    assert not report["ok"] and all(not c["ok"] for c in report["checks"])
    assert "FAIL" in health_check.format_report({"build": {}, "cuda_devices": [], "backends": {"cpu": report},
                                                  "ok": False})


def test_speed_probe_times_kernel_and_reference():
    result = health_check.speed(health_check.CHECKS[0], "cpu", repeats=1)
    assert result["kernel_ms"] > 0 and result["reference_ms"] > 0 and result["speedup"] > 0


@pytest.mark.parametrize("capability,usable,note", [
    (90, True, "sm_90 code"), (86, True, "sm_80 code"), (120, True, "PTX of compute_90"),
    (75, False, "IMM_EXT_CUDA_ARCHS=75")])
def test_architecture_support(capability, usable, note):
    got_usable, got_note = health_check.architecture_support(capability, "80,90")
    assert got_usable == usable and note in got_note


def test_gpu_check_plans_every_stage():
    run = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True)
    assert run.returncode == 0
    for stage in ("build", "doctor", "cuda-tests", "memcheck", "racecheck", "synccheck", "kernels", "models"):
        assert f"  {stage} " in run.stdout, stage
    assert "compute-sanitizer --tool racecheck" in run.stdout and "pytest -m cuda" in run.stdout


def test_gpu_check_reports_failed_and_skipped_stages(tmp_path):
    """Without a GPU the kernels stage fails, and a spent budget skips what is left; both are reported."""
    out = tmp_path / "check"
    run = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--stages", "kernels", str(out)],
                         capture_output=True, text=True, timeout=300)
    summary = (out / "SUMMARY.md").read_text()
    assert run.returncode == 1 and "| kernels | FAIL" in summary and (out / "kernels.log").is_file()
    run = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--stages", "doctor,models", str(out)],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "GPU_CHECK_BUDGET_S": "3"})
    summary = (out / "SUMMARY.md").read_text()
    assert run.returncode == 1 and "| doctor | SKIPPED" in summary and "| models | SKIPPED" in summary
