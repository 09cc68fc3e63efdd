"""Builds the one compiled part, the CPU eigensolver (menet_jax/reconstruct/batched_eigh.cc).

Everything else is in pyproject.toml. The XLA FFI headers come with jaxlib, a build
requirement pinned to the runtime's version.
"""

import os

import jaxlib
from setuptools import Extension, setup

setup(ext_modules=[
    Extension(
        "menet_jax.reconstruct._batched_eigh",
        sources=["menet_jax/reconstruct/batched_eigh.cc"],
        depends=["menet_jax/reconstruct/batched_eigh_kernel.inc"],
        include_dirs=[os.path.join(os.path.dirname(jaxlib.__file__), "include")],
        language="c++",
        # No -march: the kernel is compiled per instruction set and picked at load time.
        # -fno-wrapv undoes CPython's -fwrapv, under which GCC cannot vectorise the kernel's
        # index arithmetic (3x slower). -Wno-attributes and -Wno-return-type silence warnings
        # in jaxlib's FFI headers, -Wno-psabi a note on passing SIMD vectors by value.
        extra_compile_args=["-std=c++17", "-O3", "-fno-math-errno", "-fno-wrapv",
                            "-Wno-attributes", "-Wno-return-type", "-Wno-psabi"],
    ),
])
