"""auto precision: bf16 autocast only where /proc/cpuinfo lists a native bf16 instruction set."""

from fgclep_plugin.training.precision import cpu_flags, native_bf16, resolve_precision

AMD = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\n"
XEON = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n"


def test_flags_of_the_first_processor(tmp_path):
    (tmp_path / "amd").write_text(AMD)
    assert cpu_flags(tmp_path / "amd") == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_auto_picks_bf16_only_with_native_support(tmp_path):
    (tmp_path / "amd").write_text(AMD)
    (tmp_path / "xeon").write_text(XEON)
    assert not native_bf16("cpu", tmp_path / "amd")
    assert native_bf16("cpu", tmp_path / "xeon")
    assert resolve_precision("auto", "cpu", tmp_path / "amd") == "fp32"
    assert resolve_precision("auto", "cpu", tmp_path / "xeon") == "amp_bf16"
    assert resolve_precision("auto", "cpu", tmp_path / "missing") == "fp32"
    # an explicit precision is kept whatever the CPU
    assert resolve_precision("amp_bf16", "cpu", tmp_path / "amd") == "amp_bf16"
    assert resolve_precision("fp32", "cpu", tmp_path / "xeon") == "fp32"
