"""The one compiled part: the CPU placement library (kernels/scatter_host.cpp), loaded through
ctypes by gpuzarr.devices.host_scatter. Optional: where it cannot be built (no C++ compiler),
the install still succeeds and the CPU places chunks through NumPy, counted and logged."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "gpuzarr._scatter_host",
    sources=["kernels/scatter_host.cpp"],
    include_dirs=["kernels"],
    language="c++",
    extra_compile_args=["-std=c++17", "-O2"],
    optional=True,
)])
