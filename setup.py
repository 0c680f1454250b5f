"""The one compiled part: the host library (kernels/host_scatter.cpp, kernels/host_calls.cpp,
kernels/host_blosc.cpp), loaded through ctypes by gpuzarr.host_lib. Optional: where it cannot be built (no C++ compiler),
the install still succeeds and the CPU runs those loops in Python, counted and logged."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "gpuzarr._host_lib",
    sources=["kernels/host_scatter.cpp", "kernels/host_calls.cpp", "kernels/host_blosc.cpp"],
    include_dirs=["kernels"],
    language="c++",
    extra_compile_args=["-std=c++17", "-O2"],
    optional=True,
)])
