"""Inputs at the edges of memory and of the float range, each with a known answer: sizes whose scratch
cannot be allocated (MemoryError, never a crash), bandwidths down to the smallest positive floats
(exact zeros, finite gradients), and activations whose squares overflow (a finite LayerNorm).
Cases that used to end the process run in a fresh interpreter, so a signal fails the test instead
of ending pytest."""
import os
import pathlib
import subprocess
import sys
import textwrap


def _run_isolated(code: str, env=None, prelude: str = "") -> subprocess.CompletedProcess:
    """prelude, then code, in a fresh interpreter (this file's folder importable); its exit status and
    output."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(pathlib.Path(__file__).parent), env.get("PYTHONPATH", "")])
    script = textwrap.dedent(prelude) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)


def _assert_prints(code: str, expected: str, env=None, prelude: str = "") -> None:
    """code, run isolated, exits normally and prints `expected` last."""
    run = _run_isolated(code, env, prelude)
    assert run.returncode == 0, f"exit status {run.returncode} (negative: killed by that signal)\n{run.stderr[-3000:]}"
    assert run.stdout.split()[-1:] == [expected], run.stdout[-3000:] + run.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# Scratch that cannot be allocated: MemoryError from the op, the process intact.

# Address space left after the setup: enough for the op's outputs, not for its scratch.
_LIMITED_ADDRESS_SPACE = """
import resource
def limit_address_space(headroom_bytes):
    with open("/proc/self/status") as status:
        used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (used + headroom_bytes, resource.RLIM_INFINITY))
"""


def test_attention_forward_with_unallocatable_scratch_raises_memory_error():
    """Expanded k and v (stride 0 over keys) are read in place; packing 2^40 keys cannot be allocated."""
    _assert_prints("""
        import torch, imm_ext
        q = torch.randn(1, 2, 3, 64)
        k, v = (torch.randn(1, 2, 1, 64).expand(1, 2, 2**40, 64) for _ in range(2))
        try:
            imm_ext.ops.attention(q, k, v)
        except MemoryError:
            print("MemoryError")
    """, "MemoryError")


def test_attention_backward_with_unallocatable_scratch_raises_memory_error():
    """The backward's per-head scratch (several times one head's inputs) does not fit the address
    space left after its outputs."""
    _assert_prints("""
        import torch, imm_ext
        torch.set_num_threads(2)
        q, k, v = (torch.randn(1, 1, 8192, 64, requires_grad=True) for _ in range(3))
        out = imm_ext.ops.attention(q, k, v)
        grad_out = torch.randn_like(out)
        limit_address_space(3 * q.nbytes + (8 << 20))
        try:
            out.backward(grad_out)
        except MemoryError:
            print("MemoryError")
    """, "MemoryError", prelude=_LIMITED_ADDRESS_SPACE)


def test_pairwise_wide_layout_with_unallocatable_scratch_raises_memory_error():
    """The wide layout's per-thread squared distances (4 rows x every column) do not fit the address
    space left after the output."""
    _assert_prints("""
        import torch, imm_ext
        torch.set_num_threads(2)
        x, y = torch.randn(1, 1, 65), torch.zeros(1, 1 << 22, 65)  # zeros: pages stay untouched
        imm_ext.pairwise_kernel(x, y[:, :64], kernel="gaussian")  # threads started before the limit
        limit_address_space(2 * (1 << 22) * 4)
        try:
            imm_ext.pairwise_kernel(x, y, kernel="gaussian")
        except MemoryError:
            print("MemoryError")
    """, "MemoryError", prelude=_LIMITED_ADDRESS_SPACE)
