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
