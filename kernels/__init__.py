"""Numba kernels (CUDA and CPU) with numpy references. Imports only numba, numpy, math."""
