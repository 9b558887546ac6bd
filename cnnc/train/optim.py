"""Optimizers and learning-rate schedules for `cnnc train`.

The runtime keeps every trainable parameter in one flat float32 vector and its gradients in
another of the same length, so an optimizer here updates ONE vector in place with a handful of
whole-array numpy operations: no per-parameter loops, and scratch buffers are reused between
steps. The update rules are those of PyTorch's single-tensor ``torch.optim.SGD`` and
``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient; the SGD momentum buffer starts as
a copy of the first gradient; PyTorch's Nesterov form), operation for operation in float32, so
results agree with PyTorch to float32 rounding.

``state_dict()`` holds numpy arrays and scalars only (it goes into the checkpoint .npz); it
carries the running state (step count, buffers), not the hyperparameters, which come from the
model and command line when training resumes.

Schedules give the learning rate of an epoch (0-based): ``constant``; ``step`` (multiply by
``gamma`` every ``step_size`` epochs, as StepLR); ``cosine`` (from base_lr at epoch 0 towards
``eta_min`` (0) at epoch ``epochs``, as CosineAnnealingLR with T_max=epochs).
"""
from __future__ import annotations

import inspect
import math

import numpy as np

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine")


class Optimizer:
    """Shared plumbing: argument checks, named scratch buffers and state-dict kind checks."""

    kind = ""

    def __init__(self, lr: float):
        if not lr >= 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        self.lr = float(lr)
        self._scratch: dict[str, np.ndarray] = {}

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float | None = None) -> None:
        raise NotImplementedError

    def _check(self, params: np.ndarray, grads: np.ndarray) -> None:
        if params.shape != grads.shape or params.ndim != 1:
            raise ValueError(f"params {params.shape} and grads {grads.shape} must be flat vectors "
                             "of the same length")
        if params.dtype != np.float32 or grads.dtype != np.float32:
            raise ValueError(f"params and grads must be float32, got {params.dtype}, {grads.dtype}")

    def _buffer(self, name: str, like: np.ndarray) -> np.ndarray:
        """A scratch vector the size of the parameters, allocated once per name so that a step
        makes no temporaries (the vector holds every parameter of the network)."""
        buf = self._scratch.get(name)
        if buf is None or buf.shape != like.shape:
            buf = self._scratch[name] = np.empty_like(like)
        return buf

    def _check_kind(self, d: dict) -> None:
        kind = str(d.get("kind", ""))
        if kind != self.kind:
            raise ValueError(f"optimizer state is for '{kind}', not '{self.kind}'")


class SGD(Optimizer):
    """torch.optim.SGD. With g = grad + weight_decay * p:
    buf = g at the first step, else momentum * buf + (1 - dampening) * g;
    p -= lr * (g + momentum * buf if nesterov else buf)   (just lr * g without momentum)."""

    kind = "sgd"

    def __init__(self, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, dampening: float = 0.0):
        super().__init__(lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError("momentum and weight_decay must be >= 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.weight_decay, self.dampening = float(weight_decay), float(dampening)
        self.momentum_buffer: np.ndarray | None = None

    def step(self, params, grads, lr=None):
        self._check(params, grads)
        lr = self.lr if lr is None else float(lr)
        d = grads
        if self.weight_decay:
            d = _decayed(grads, params, self.weight_decay, self._buffer("decayed", params))
        if self.momentum:
            buf = self._update_momentum(d)
            if self.nesterov:
                # torch: grad.add(buf, alpha=momentum)
                out = self._buffer("nesterov", params)
                np.multiply(buf, np.float32(self.momentum), out=out)
                out += d
                d = out
            else:
                d = buf
        # torch: param.add_(d, alpha=-lr)
        update = self._buffer("update", params)
        np.multiply(d, np.float32(-lr), out=update)
        params += update

    def _update_momentum(self, d: np.ndarray) -> np.ndarray:
        buf = self.momentum_buffer
        if buf is None or buf.shape != d.shape:
            # PyTorch starts the buffer as a copy of the first gradient, undamped.
            self.momentum_buffer = d.copy()
            return self.momentum_buffer
        buf *= np.float32(self.momentum)
        if self.dampening:
            damped = self._buffer("update", d)
            np.multiply(d, np.float32(1 - self.dampening), out=damped)
            buf += damped
        else:
            buf += d
        return buf

    def state_dict(self) -> dict:
        d = {"kind": self.kind}
        if self.momentum_buffer is not None:
            d["momentum_buffer"] = self.momentum_buffer.copy()
        return d

    def load_state_dict(self, d: dict) -> None:
        self._check_kind(d)
        buf = d.get("momentum_buffer")
        self.momentum_buffer = None if buf is None else np.array(buf, dtype=np.float32)


class Adam(Optimizer):
    """torch.optim.Adam (amsgrad off). With g = grad + weight_decay * p and t the step count:
    m = lerp(m, g, 1 - beta1); v = beta2 * v + (1 - beta2) * g * g;
    p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)."""

    kind = "adam"

    def __init__(self, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(lr)
        beta1, beta2 = (float(b) for b in betas)
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError("eps and weight_decay must be >= 0")
        self.betas, self.eps, self.weight_decay = (beta1, beta2), float(eps), float(weight_decay)
        self.t = 0
        self.exp_avg: np.ndarray | None = None
        self.exp_avg_sq: np.ndarray | None = None

    def step(self, params, grads, lr=None):
        self._check(params, grads)
        lr = self.lr if lr is None else float(lr)
        beta1, beta2 = self.betas
        if self.exp_avg is None or self.exp_avg.shape != params.shape:
            self.exp_avg, self.exp_avg_sq = np.zeros_like(params), np.zeros_like(params)
        self.t += 1
        g = grads
        if self.weight_decay:
            g = _decayed(grads, params, self.weight_decay, self._buffer("decayed", params))
        m, v = self.exp_avg, self.exp_avg_sq
        tmp, denom = self._buffer("tmp", params), self._buffer("denom", params)
        _lerp(m, g, 1 - beta1, tmp)
        # torch: exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        v *= np.float32(beta2)
        np.multiply(g, g, out=tmp)
        tmp *= np.float32(1 - beta2)
        v += tmp
        # Bias corrections in double precision, as torch computes them from Python floats.
        step_size = lr / (1 - beta1**self.t)
        bias_correction2_sqrt = (1 - beta2**self.t) ** 0.5
        # torch: denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        np.sqrt(v, out=denom)
        denom /= np.float32(bias_correction2_sqrt)
        denom += np.float32(self.eps)
        # torch: param.addcdiv_(exp_avg, denom, value=-step_size) = p + (-step_size * m) / denom
        np.multiply(m, np.float32(-step_size), out=tmp)
        tmp /= denom
        params += tmp

    def state_dict(self) -> dict:
        d = {"kind": self.kind, "step": np.int64(self.t)}
        if self.exp_avg is not None:
            d["exp_avg"], d["exp_avg_sq"] = self.exp_avg.copy(), self.exp_avg_sq.copy()
        return d

    def load_state_dict(self, d: dict) -> None:
        self._check_kind(d)
        self.t = int(d.get("step", 0))
        has = "exp_avg" in d and "exp_avg_sq" in d
        self.exp_avg = np.array(d["exp_avg"], dtype=np.float32) if has else None
        self.exp_avg_sq = np.array(d["exp_avg_sq"], dtype=np.float32) if has else None


def _decayed(grads, params, weight_decay: float, out: np.ndarray) -> np.ndarray:
    """grads + weight_decay * params into `out` (torch's grad.add(param, alpha=weight_decay))."""
    np.multiply(params, np.float32(weight_decay), out=out)
    out += grads
    return out


def _lerp(start: np.ndarray, end: np.ndarray, weight: float, tmp: np.ndarray) -> None:
    """start.lerp_(end, weight) in place, with the two branches of torch's CPU kernel."""
    w = np.float32(weight)
    np.subtract(end, start, out=tmp)
    if abs(weight) < 0.5:
        tmp *= w
        start += tmp
    else:
        tmp *= np.float32(1 - weight)
        np.subtract(end, tmp, out=start)


# ---------------------------------------------------------------------------------------------
# Factories and schedules


def make_optimizer(name: str, **kw) -> Optimizer:
    """An optimizer by name ('sgd' or 'adam') with its options; ValueError for unknown names or
    options (saying which options the optimizer takes)."""
    classes = {"sgd": SGD, "adam": Adam}
    cls = classes.get(str(name).lower())
    if cls is None:
        raise ValueError(f"unknown optimizer '{name}'; expected one of {', '.join(OPTIMIZERS)}")
    allowed = list(inspect.signature(cls).parameters)
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ValueError(f"{cls.kind} has no option {', '.join(unknown)} "
                         f"(it takes {', '.join(allowed)})")
    return cls(**kw)


def learning_rate(schedule: str, base_lr: float, epoch: int, epochs: int, **kw) -> float:
    """The learning rate of 0-based `epoch` out of `epochs` under a schedule:
    constant; step (step_size, gamma=0.1); cosine (eta_min=0)."""
    if schedule == "constant":
        _no_options(schedule, kw, ())
        return float(base_lr)
    if schedule == "step":
        _no_options(schedule, kw, ("step_size", "gamma"))
        if "step_size" not in kw or int(kw["step_size"]) < 1:
            raise ValueError("the step schedule needs step_size >= 1")
        return float(base_lr) * float(kw.get("gamma", 0.1)) ** (int(epoch) // int(kw["step_size"]))
    if schedule == "cosine":
        _no_options(schedule, kw, ("eta_min",))
        eta_min = float(kw.get("eta_min", 0.0))
        t = min(int(epoch), int(epochs)) / max(int(epochs), 1)
        return eta_min + (float(base_lr) - eta_min) * (1 + math.cos(math.pi * t)) / 2
    raise ValueError(f"unknown schedule '{schedule}'; expected one of {', '.join(SCHEDULES)}")


def _no_options(schedule: str, kw: dict, allowed: tuple) -> None:
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
        raise ValueError(f"the {schedule} schedule has no option {', '.join(unknown)} ({takes})")
