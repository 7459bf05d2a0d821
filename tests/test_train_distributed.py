"""Two-process training on the CPU (gloo) under torchrun: the ranks end with bit-identical parameters,
only rank 0 writes files, and a rank that dies ends the job with a clear message instead of a hang."""
import json
import os
import subprocess
import sys
import textwrap

TINY = ["model.options.width=16", "model.options.depth=1", "train.threads=1", "train.steps=4", "train.batch_size=64",
        "train.micro_batch=16", "eval.steps=1", "eval.num_samples=64", "eval.batch_size=64", "log.log_every=2",
        "log.progress=false", "log.tensorboard=false", "data.options={n: 2000}", "train.dist_timeout_s=60"]


def torchrun(arguments, cwd, timeout=240):
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", *arguments], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=timeout)


def test_two_cpu_ranks_end_with_identical_parameters(tmp_path):
    run = torchrun(["-m", "imm_ext.cli", "train", "--preset", "toy2d", "--name", "ddp", f"log.root={tmp_path}",
                    *TINY], cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    digests = summary["parameter_sha256_by_rank"]
    assert summary["world_size"] == 2 and len(digests) == 2 and digests[0] == digests[1]
    assert [p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()] == ["step-00000004.pt"]


def test_a_failing_rank_ends_the_job_with_a_clear_message(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(textwrap.dedent(f"""
        import os
        from imm_ext.train import Trainer, apply_overrides, get_preset

        def fail_on_rank_one(trainer, step):
            if step == 2 and os.environ["RANK"] == "1":
                raise RuntimeError("simulated failure of rank 1")

        config = apply_overrides(get_preset("toy2d"), {TINY!r} + ["log.root={tmp_path}", "train.steps=50"])
        Trainer(config, on_step=fail_on_rank_one).run()
    """))
    run = torchrun([str(script)], cwd=tmp_path)
    assert run.returncode != 0
    assert "[rank 1/2] training failed: RuntimeError: simulated failure of rank 1" in run.stderr
