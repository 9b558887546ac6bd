"""Small blocks of sums that a kernel keeps in the CPU's vector registers across a loop.

Numba's arrays live on the heap, where LLVM cannot tell them from the arrays a loop reads: a
sum kept in one is loaded and stored at every turn of the loop around it. A block on the stack
(`stack_block`: an `alloca` in the function's entry block) belongs to no one else, so once
the loop over its elements is vectorized into whole registers LLVM keeps those registers for
the whole loop around it: the direct convolution's inner loop (kernels/direct.py) became sixteen
fused multiply-adds on registers, two vector loads, eight broadcast weights and no stores.

LANES is how many float32 one vector register holds on this machine: the length of a run of
sums, so that a run is one register."""
from numba import types
from numba.core import cgutils
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic


def _vector_lanes() -> int:
    """16 where Numba compiles for AVX-512, else 8 (AVX2's 256 bits)."""
    return 16 if "+avx512f" in get_host_cpu_features().split(",") else 8


LANES = _vector_lanes()


@intrinsic
def stack_block(typingctx, count, dtype):
    """A pointer to `count` (a constant) uninitialized elements of `dtype` on the stack, for
    numba.carray; it lives until the calling function returns (which must not return it)."""
    if not isinstance(count, types.IntegerLiteral):
        return None
    size = count.literal_value

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(dtype.dtype), size=size)

    return types.CPointer(dtype.dtype)(count, dtype), codegen
