"""cnnc.kernels.resize against PyTorch's interpolate and finite differences: nearest and bilinear upsampling."""
import numpy as np
import pytest
import torch.nn.functional as F
from checks import cnhw, nchw, numeric_gradient, rel_err

from cnnc.kernels import resize

# (H, W, factor): square and nonsquare images and factors, 1 x 1 and 1-wide inputs.
GEOMETRIES = [(4, 5, (2, 2)), (5, 3, (3, 3)), (3, 4, (2, 3)), (1, 1, (3, 2)), (2, 1, (1, 4)), (7, 6, (3, 1))]
MODES = ["nearest", "bilinear"]


def kernels(mode):
    return getattr(resize, f"upsample_{mode}_forward"), getattr(resize, f"upsample_{mode}_backward")


def torch_upsample(t, mode, factor):
    align = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t, scale_factor=factor, mode=mode, **align)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_upsample_matches_torch(mode, geometry):
    H, W, (fh, fw) = geometry
    rng = np.random.default_rng(H * 10 + W)
    x = rng.standard_normal((3, 2, H, W)).astype(np.float32)
    forward, backward = kernels(mode)
    out = np.full((3, 2, H * fh, W * fw), np.nan, np.float32)
    forward(x, out, fh, fw)
    xt = nchw(x).requires_grad_()
    yt = torch_upsample(xt, mode, (fh, fw))
    assert rel_err(out, cnhw(yt)) < 1e-6
    dout = rng.standard_normal(out.shape).astype(np.float32)
    yt.backward(nchw(dout))
    prefill = rng.standard_normal(x.shape).astype(np.float32)
    dx = prefill.copy()
    backward(dout, dx, fh, fw)  # adds into dx
    assert rel_err(dx - prefill, cnhw(xt.grad)) < 1e-5


@pytest.mark.parametrize("mode", MODES)
def test_upsample_backward_finite_differences_float64(mode):
    rng = np.random.default_rng(5)
    fh, fw = 3, 2
    x = rng.standard_normal((2, 2, 3, 4))
    weights = rng.standard_normal((2, 2, 3 * fh, 4 * fw))
    forward, backward = kernels(mode)

    def loss():
        out = np.empty_like(weights)
        forward(x, out, fh, fw)
        return float((out * weights).sum())

    dx = np.zeros_like(x)
    backward(weights, dx, fh, fw)
    assert rel_err(dx, numeric_gradient(loss, x)) < 1e-7
