"""CUDA C sources shipped with gpuzarr, compiled at run time through NVRTC (see gpuzarr.devices.kernels)."""
