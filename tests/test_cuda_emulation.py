"""The emulated CUDA launch itself (csrc/emulation): a correct kernel computes exactly, and each kind of
bug it exists to catch fails the launch with a message naming the kernel and the cause, through the same
cudaGetLastError check the real build uses; shared memory starts as NaN; the schedules differ."""
import pytest

from imm_ext import _core

emulation = _core._C_emu


@pytest.fixture(autouse=True)
def forward_schedule():
    if emulation is None:
        pytest.fail("imm_ext was built without the emulated CUDA kernels: install with IMM_EXT_CUDA_EMULATION=ON "
                    "(the README's test command does)")
    yield
    emulation.set_schedule("forward", 0)


def test_a_correct_kernel_with_barriers_and_shuffles_is_exact():
    for order in ("forward", "reverse", "random"):
        emulation.set_schedule(order, 7)
        error, out = emulation.self_test("block_sum")
        assert error == "" and out[0] == sum(range(256)), order


@pytest.mark.parametrize("case,message", [
    ("barrier_mismatch", "threads wait at different __syncthreads"),
    ("shuffle_after_exit", "waits for lane 31, which is exited"),
    ("deadlock", "waits for lane 0, which is at __syncthreads"),
    ("too_many_threads", "invalid configuration argument: a block of 2048x1x1 threads"),
    ("too_much_shared_memory", "bytes of dynamic shared memory"),
])
def test_each_kind_of_bug_fails_the_launch(case, message):
    error, _ = emulation.self_test(case)
    assert f"emulated kernel {case}" in error and message in error, error


def test_shared_memory_starts_as_nan():
    error, out = emulation.self_test("uninitialized_shared")
    assert error == "" and all(value != value for value in out[:32])


def test_schedules_run_blocks_in_different_orders():
    last = {}
    for order in ("forward", "reverse"):
        emulation.set_schedule(order, 0)
        last[order] = emulation.self_test("last_block")[1][0]
    assert last == {"forward": 6.0, "reverse": 0.0}
    with pytest.raises(ValueError, match="schedule must be"):
        emulation.set_schedule("sideways", 0)
