"""Install with ``pip install --no-build-isolation -e .`` after ``pip install torch==2.13.0``
(build isolation would pull a second, multi-GB torch into the build environment)."""
from setuptools import find_packages, setup

setup(
    name="sia_kernels",
    version="0.1.0",
    description="Fused kernels and a thin decoder for Sparse Inference-time Alignment",
    packages=find_packages(include=["sia_kernels", "sia_kernels.*", "python_bindings"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "triton; platform_system=='Linux'",
        "transformers>=4.50",
        "peft",
        "numpy",
        "safetensors",
        "tqdm",
    ],
    extras_require={"test": ["pytest", "pytest-benchmark"], "plot": ["matplotlib"]},
    entry_points={"console_scripts": ["sia = sia_kernels.cli:main"]},
)
