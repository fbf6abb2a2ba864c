"""Builds the ``kdkit._C`` extension only; package metadata lives in pyproject.toml.

CPU sources (csrc/*.cpp, csrc/cpu/*.cpp) are always built. CUDA sources (csrc/cuda/*.cu) are
added when torch is a CUDA build and a CUDA toolkit (nvcc + libcudart) is found.

Environment:
  KDKIT_FORCE_CUDA=1   fail if the CUDA sources cannot be built
  KDKIT_FORCE_CPU=1    never build CUDA sources
  CUDA_HOME            toolkit location (default: /usr/local/cuda, then torch's guess)
  TORCH_CUDA_ARCH_LIST target GPUs (default "8.0;9.0" when no GPU is visible)
  MAX_JOBS             parallel compile jobs (default: number of CPU cores)

Build for development:  pip install --no-deps --no-build-isolation -e .
"""
import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _find_cuda_home():
    """First toolkit among $CUDA_HOME, /usr/local/cuda, torch's guess with bin/nvcc and libcudart."""
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.environ[var])
    candidates.append("/usr/local/cuda")
    problems = []
    for home in candidates:
        nvcc = os.path.join(home, "bin", "nvcc")
        libs = glob.glob(os.path.join(home, "lib64", "libcudart.so*")) + glob.glob(
            os.path.join(home, "lib", "libcudart.so*")
        ) + glob.glob(os.path.join(home, "targets", "*", "lib", "libcudart.so*"))
        if os.path.isfile(nvcc) and libs:
            return os.path.realpath(home), problems
        problems.append(f"{home}: " + ("no libcudart" if os.path.isfile(nvcc) else "no bin/nvcc"))
    # Last resort: torch's own guess (which may be /usr/local when nvcc is a wrapper there).
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    if home and home not in candidates:
        nvcc = os.path.join(home, "bin", "nvcc")
        libs = glob.glob(os.path.join(home, "lib64", "libcudart.so*"))
        if os.path.isfile(nvcc) and libs:
            return os.path.realpath(home), problems
        problems.append(f"{home}: no bin/nvcc or libcudart")
    return None, problems


def _want_cuda(torch):
    """Returns (build_cuda, cuda_home). Raises SystemExit when KDKIT_FORCE_CUDA cannot be met."""
    force_cuda, force_cpu = _flag("KDKIT_FORCE_CUDA"), _flag("KDKIT_FORCE_CPU")
    if force_cuda and force_cpu:
        sys.exit("kdkit setup: KDKIT_FORCE_CUDA=1 and KDKIT_FORCE_CPU=1 are contradictory")
    if force_cpu:
        return False, None
    cu_sources = glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is not a CUDA build")
    if not cu_sources:
        reasons.append("no csrc/cuda/*.cu sources")
    home, problems = _find_cuda_home()
    if home is None:
        reasons.append("no CUDA toolkit found (" + "; ".join(problems) + ")")
    if reasons:
        if force_cuda:
            sys.exit("kdkit setup: KDKIT_FORCE_CUDA=1 but CUDA kernels cannot be built: "
                     + "; ".join(reasons))
        print("kdkit setup: building CPU kernels only (" + "; ".join(reasons) + ")")
        return False, None
    return True, home


def _extensions():
    import torch

    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    build_cuda, cuda_home = _want_cuda(torch)
    if build_cuda:
        # torch.utils.cpp_extension reads CUDA_HOME when imported, so set it first and
        # re-read it (the module may already be imported with a wrong guess).
        os.environ["CUDA_HOME"] = cuda_home
        from torch.utils import cpp_extension

        cpp_extension.CUDA_HOME = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    # No FMA contraction: the penalty sums must be bit-identical on every ISA path.
    # torch.utils.cpp_extension adds the C++ standard torch needs (C++20 for torch 2.14).
    cxx = ["-O3", "-ffp-contract=off"]
    link = []
    # at::parallel_for is an inline template: it runs threads only where the including file is
    # compiled with OpenMP (torch's own libgomp is the one used at load time). GCC on Linux only;
    # elsewhere the kernels build single-threaded, and say so.
    if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    else:
        print("kdkit setup: WARNING: building without OpenMP; the CPU kernels will use one thread")
    define_macros = []
    if build_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define_macros.append(("KDKIT_WITH_CUDA", "1"))
        ext = CUDAExtension(
            "kdkit._C",
            sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
            extra_link_args=link,
        )
        print(f"kdkit setup: building CPU + CUDA kernels (CUDA_HOME={cuda_home}, "
              f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '<auto>')})")
    else:
        ext = CppExtension("kdkit._C", sources, define_macros=define_macros,
                           extra_compile_args={"cxx": cxx}, extra_link_args=link)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
