"""The Numba kernels that generated model code calls: forward and backward per op family.

Activations are CNHW (see docs/design.md). Importing this package picks Numba's workqueue
threading layer: OpenMP's layer fights OpenBLAS for the cores when kernels call np.dot.
"""
import numba

if numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "workqueue"
