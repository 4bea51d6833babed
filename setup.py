"""Build torch_ntk._C with torch.utils.cpp_extension.

CPU ops are always built. CUDA ops (csrc/cuda/*.cu) are added when a CUDA
toolkit is found, or when FORCE_CUDA=1 (then the toolkit must exist; set
CUDA_HOME to its root if nvcc is a wrapper script). Without a visible GPU the
default TORCH_CUDA_ARCH_LIST is "8.0;9.0+PTX" (A100, H100/H200, and PTX that newer
GPUs JIT-compile). FORCE_CUDA=0
builds a CPU-only package even where a toolkit exists.

Install with: pip install --no-build-isolation -e .
"""

import glob
import os
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - message for people who skip the README
    sys.exit(
        "torch_ntk: PyTorch must be installed before building (pip install torch), and the "
        "build must see it: pip install --no-build-isolation ."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))
# Device-code flags. No --use_fast_math: it makes sqrtf and division approximate and
# flushes denormals, which breaks the exact diagonal of the ReLU family (sqrt(q*q) == q)
# and moves float32 results away from the CPU's. The IEEE settings are nvcc's defaults,
# spelled out so that no later edit drops them silently. scripts/ptx_check.py reads this
# list (a literal, parsed without running setup.py) and checks the PTX it produces.
NVCC_FLAGS = ["-O3", "-lineinfo", "-prec-sqrt=true", "-prec-div=true", "-ftz=false"]


def _want_cuda() -> bool:
    force = os.environ.get("FORCE_CUDA")
    if force is not None and force.strip() not in ("", "0"):
        if CUDA_HOME is None:
            sys.exit("torch_ntk: FORCE_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME.")
        if torch.version.cuda is None:
            sys.exit(
                "torch_ntk: FORCE_CUDA=1 needs a CUDA build of torch; this torch "
                f"({torch.__version__}) is CPU-only."
            )
        return True
    if force is not None and force.strip() == "0":
        return False
    return CUDA_HOME is not None and torch.version.cuda is not None


def get_extensions():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # -fno-trapping-math lets GCC if-convert the branch-free square roots and divisions of
    # the per-pair loops (csrc/cpu/analytic_ntk_cpu.cpp), i.e. vectorize them (vsqrtps and
    # vdivps in objdump; GCC 12 keeps them scalar without it). No change to the results:
    # IEEE exception flags are not read anywhere.
    # -g0: Python's CFLAGS (sysconfig) add -g, and the debug information of torch's
    # headers more than doubles each object's compile time (structured_ntk_cpu.cpp: 68 s
    # of CPU with -g, 29 s with -g0, GCC 12) and makes the library 16 MB instead of ~1 MB.
    cxx_flags = ["-O3", "-g0", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
    extra_link = ["-fopenmp"]
    define_macros = []
    if _want_cuda():
        if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros.append(("TORCH_NTK_WITH_CUDA", None))
        nvcc_flags = list(NVCC_FLAGS)
        return [
            CUDAExtension(
                "torch_ntk._C",
                sources,
                define_macros=define_macros,
                extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                extra_link_args=extra_link,
            )
        ]
    return [
        CppExtension(
            "torch_ntk._C",
            sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=extra_link,
        )
    ]


setup(
    packages=find_packages(include=["torch_ntk", "torch_ntk.*"]),
    package_data={"torch_ntk": ["py.typed"]},  # PEP 561: the package ships type hints
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
