"""The Numba kernels that the generated model code calls: forward and backward per op family.

Activations are CNHW (see docs/design.md). Every kernel is serial and releases the GIL: the
runtime gets its parallelism by running the whole network on slices of the batch in threads
of its own. The matrix products inside (np.dot) call SciPy's OpenBLAS, whose thread count
`set_blas_threads` sets: one while slices run side by side, all cores for a single slice.
"""
import os
from functools import cache


@cache
def _numba_blas():
    """threadpoolctl's handle on the OpenBLAS that Numba's np.dot calls (SciPy's), or None."""
    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  (loads the library, so threadpoolctl sees it)
    from threadpoolctl import ThreadpoolController

    scipy_libs = os.path.dirname(os.path.dirname(scipy.__file__)) + os.sep + "scipy"
    for lib in ThreadpoolController().lib_controllers:
        if lib.user_api == "blas" and lib.filepath.startswith(scipy_libs):
            return lib
    return None


def set_blas_threads(count: int) -> None:
    """Sets the thread count of the BLAS inside the kernels (numpy's own BLAS is left alone)."""
    lib = _numba_blas()
    if lib is not None and lib.num_threads != count:
        lib.set_num_threads(count)
