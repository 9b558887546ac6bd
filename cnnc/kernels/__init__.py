"""The Numba kernels that generated model code calls: forward and backward per op family.

Activations are CNHW (see docs/design.md). Importing this package picks Numba's workqueue
threading layer: OpenMP's layer fights OpenBLAS for the cores when kernels call np.dot.
The kernels own the threads (they split the batch over Numba's threads and call one-threaded
matrix products in each), so `setup_threads` must run before they do.
"""
import numba

if numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "workqueue"


def setup_threads() -> None:
    """Starts Numba's thread pool and limits the OpenBLAS that Numba's np.dot calls (SciPy's)
    to one thread, for this process; numpy's own BLAS, a different library, keeps its threads.

    The pool must be started by hand: a function loaded from Numba's cache that calls a
    parallel kernel does not start it and crashes (segmentation fault) without it."""
    numba.get_num_threads()  # launches the pool
    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  (loads the library, so threadpoolctl sees it)
    from threadpoolctl import ThreadpoolController

    scipy_dir = scipy.__file__.rsplit("/", 2)[0]
    controller = ThreadpoolController()
    ours = [lib["filepath"] for lib in controller.info()
            if lib["user_api"] == "blas" and lib["filepath"].startswith(scipy_dir + "/scipy")]
    if ours:
        controller.select(filepath=ours).limit(limits=1)
