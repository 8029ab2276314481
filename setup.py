"""Install with ``pip install --no-build-isolation -e .`` after ``pip install torch==2.13.0``
(build isolation would pull a second, multi-GB torch into the build environment).

The C++ op (csrc/cpu, python_bindings/cpu_ops.cpp) is built here, and the CUDA op too where
torch has CUDA and nvcc is found; a failed build fails the install. SIA_NO_EXT=1 skips them
(python_bindings then builds them at first use with torch.utils.cpp_extension.load)."""
import importlib.util
import os
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def _ext_modules():
    if os.environ.get("SIA_NO_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("setup.py: torch is not installed, so the C++ ops will be built at first use")
        return [], {}
    # Build settings live in python_bindings/__init__.py (stdlib-only at import), shared with the
    # first-use build.
    spec = importlib.util.spec_from_file_location("_sia_bindings", HERE / "python_bindings" / "__init__.py")
    pb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pb)

    def rel(paths):
        return [os.path.relpath(p, HERE) for p in paths]

    exts = [
        CppExtension(
            "python_bindings._C_cpu",
            rel(pb.CPU_SOURCES),
            extra_compile_args=pb.CPU_CFLAGS,
            extra_link_args=pb.CPU_LDFLAGS,
        )
    ]
    if torch.version.cuda and CUDA_HOME:
        exts.append(
            CUDAExtension(
                "python_bindings._C_cuda",
                rel(pb.CUDA_SOURCES),
                extra_compile_args={"cxx": pb.CUDA_CFLAGS, "nvcc": pb.CUDA_NVCC_FLAGS},
            )
        )
    return exts, {"build_ext": BuildExtension}


EXT_MODULES, CMDCLASS = _ext_modules()

setup(
    name="sia_kernels",
    version="0.1.0",
    description="Fused kernels and a thin decoder for Sparse Inference-time Alignment",
    packages=find_packages(include=["sia_kernels", "sia_kernels.*", "python_bindings"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "triton; platform_system=='Linux'",
        "transformers>=5.0",  # the value model uses the v5 cache and mask API
        "peft",
        "numpy",
        "safetensors",
        "ninja",  # first-use builds of the C++ op (torch.utils.cpp_extension.load)
        "tqdm",
        "matplotlib",  # the demo's pareto plot
    ],
    extras_require={"test": ["pytest", "pytest-benchmark"]},
    entry_points={"console_scripts": ["sia = sia_kernels.cli:main"]},
    ext_modules=EXT_MODULES,
    cmdclass=CMDCLASS,
)
