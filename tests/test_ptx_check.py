"""scripts/ptx_check.py's scanner on PTX written by hand: what --use_fast_math emits
(sqrt.approx.ftz.f32, div.approx/div.full.f32, tanh.approx) is reported as forbidden per
function; the IEEE forms (sqrt.rn, div.rn) and the approximations CUDA's accurate libm
uses internally (ex2.approx) are counted but allowed. The setup.py flags it reads hold no
fast math. (The script itself compiles the real kernels in CI: .ci/run.)"""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("ptx_check", ROOT / "scripts" / "ptx_check.py")
ptx_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ptx_check)

IEEE = """
.visible .entry _Z6kernelIfEvPT_(
    .param .u64 p
)
{
    sqrt.rn.f32     %f2, %f1;
    div.rn.f32      %f3, %f2, %f1;
    ex2.approx.ftz.f32  %f4, %f3;   // inside expf: allowed
    fma.rn.f32      %f5, %f4, %f3, %f2;
}
.func _Z4helpd(
)
{
    sqrt.rn.f64     %fd2, %fd1;
}
"""

FAST = """
.visible .entry _Z6kernelIfEvPT_(
    .param .u64 p
)
{
    sqrt.approx.ftz.f32     %f2, %f1;
    div.approx.ftz.f32      %f3, %f2, %f1;
    div.full.f32            %f6, %f2, %f1;
    tanh.approx.f32         %f4, %f3;
    // sqrt.approx.f32 in a comment is not an instruction
}
"""


def test_ieee_ptx_passes_and_is_counted():
    counts, bad = ptx_check.scan(IEEE)
    assert bad == []
    kernel = counts["_Z6kernelIfEvPT_"]
    assert kernel["ex2.approx"] == 1 and kernel[".ftz"] == 1
    assert kernel["sqrt.approx"] == 0 and kernel["div.approx"] == 0
    assert "_Z4helpd" in counts


def test_fast_math_ptx_is_forbidden():
    counts, bad = ptx_check.scan(FAST)
    whats = sorted(what for _, what, _ in bad)
    assert whats.count("approximate float32 sqrt") == 1
    assert whats.count("approximate float32 division") == 2
    assert whats.count("approximate tanh") == 1
    assert whats.count("flush-to-zero sqrt/division") == 2
    assert all(fn == "_Z6kernelIfEvPT_" for fn, _, _ in bad)
    k = counts["_Z6kernelIfEvPT_"]
    assert (k["sqrt.approx"], k["div.approx"], k["div.full"], k["tanh.approx"]) == (1, 1, 1, 1)


def test_setup_flags_have_no_fast_math():
    flags = ptx_check.nvcc_flags_from_setup()
    assert "--use_fast_math" not in flags and "-use_fast_math" not in flags
    for flag in ("-prec-sqrt=true", "-prec-div=true", "-ftz=false"):
        assert flag in flags


LINES = """
.visible .entry _Z6kernelIdEvPT_(
    .param .u64 p
)
{
	.loc	2 22 5
	mul.lo.s64 	%rd3, %rd1, %rd2;
	.loc	2 0 5
	div.s64 	%rd4, %rd3, %rd2;
	.loc	1 7 3, function_name $L__info_string0, inlined_at 2 30 1
	rem.u64 	%rd5, %rd3, %rd2;
	div.s32 	%r1, %r2, %r3;
}
	.file	1 "/x/csrc/math/plane_cursor.h"
	.file	2 "/x/csrc/cuda/k.cu"
"""


def test_64_bit_divisions_are_attributed_to_source_lines():
    """div/rem.s64|u64 counted (div.s32 not), each at the last .loc with a line: a .loc of
    line 0 (code the optimizer moved) keeps the line before it; .file names come at the
    end of the PTX."""
    counts, bad, sites = ptx_check.scan_sites(LINES)
    assert bad == [] and counts["_Z6kernelIdEvPT_"]["div/rem.64"] == 2
    assert sites == {("_Z6kernelIdEvPT_", "/x/csrc/cuda/k.cu", 22): 1,
                     ("_Z6kernelIdEvPT_", "/x/csrc/math/plane_cursor.h", 7): 1}


def test_ptxas_report_is_parsed():
    text = """ptxas info    : Compiling entry function '_Z1kv' for 'sm_90'
ptxas info    : Function properties for _Z1kv
    512 bytes stack frame, 68 bytes spill stores, 120 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers, 512 bytes cumulative stack size, 4096 bytes smem
ptxas info    : Compiling entry function '_Z1jv' for 'sm_90'
ptxas info    : Function properties for _Z1jv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 16 registers, used 0 barriers
"""
    res = ptx_check.parse_ptxas(text)
    assert res["_Z1kv"] == {"registers": 128, "stack": 512, "spill_stores": 68,
                            "spill_loads": 120, "smem": 4096}
    assert res["_Z1jv"] == {"registers": 16, "stack": 0, "spill_stores": 0, "spill_loads": 0,
                            "smem": 0}
