"""The compiled core reports how it was built, and imports without a GPU or driver."""
import imm_ext


def test_build_info():
    info = imm_ext.build_info()
    assert info["version"] == imm_ext.__version__
    assert isinstance(info["cuda"], bool)
    assert info["cpu_isa"] in ("avx512", "avx2", "baseline")
    assert info["openmp_threads"] >= 1
    assert info["compiler"].split()[0] in ("gcc", "clang")
    if info["cuda"]:
        assert info["cuda_archs"]
