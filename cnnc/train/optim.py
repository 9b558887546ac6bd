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

``AdamW`` is ``torch.optim.AdamW``: the decay is decoupled, ``p *= 1 - lr * weight_decay`` before
the Adam step, instead of being added to the gradient. ``weight_decay`` may be a number or a
per-element float32 vector (``decay_vector``: zero for batchnorm and bias parameters when they
are left undecayed).

Schedules give the learning rate of an epoch (0-based): ``constant``; ``step`` (multiply by
``gamma`` every ``step_size`` epochs, as StepLR); ``cosine`` (from base_lr at epoch 0 towards
``eta_min`` (0) at epoch ``epochs``, as CosineAnnealingLR with T_max=epochs). ``step_rate``
gives the rate of one step: the epoch's, times a linear warmup, or ``onecycle``
(torch.optim.lr_scheduler.OneCycleLR per step, without momentum cycling).
"""
from __future__ import annotations

import inspect
import math

import numpy as np

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle")


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
        if momentum < 0 or _negative(weight_decay):
            raise ValueError("momentum and weight_decay must be >= 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.weight_decay, self.dampening = _decay(weight_decay), float(dampening)
        self.momentum_buffer: np.ndarray | None = None

    def step(self, params, grads, lr=None):
        self._check(params, grads)
        lr = self.lr if lr is None else float(lr)
        d = grads
        if _any(self.weight_decay):
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
        if eps < 0 or _negative(weight_decay):
            raise ValueError("eps and weight_decay must be >= 0")
        self.betas, self.eps, self.weight_decay = (beta1, beta2), float(eps), _decay(weight_decay)
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
        g = self._decay_step(params, grads, lr)
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

    def _decay_step(self, params, grads, lr: float) -> np.ndarray:
        """Adam's L2 penalty: the gradient to use, with weight_decay * params added."""
        if not _any(self.weight_decay):
            return grads
        return _decayed(grads, params, self.weight_decay, self._buffer("decayed", params))

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


class AdamW(Adam):
    """torch.optim.AdamW: p *= 1 - lr * weight_decay, then the Adam step on the plain gradient."""

    kind = "adamw"

    def __init__(self, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(lr, betas, eps, weight_decay)

    def _decay_step(self, params, grads, lr: float) -> np.ndarray:
        if _any(self.weight_decay):
            if isinstance(self.weight_decay, np.ndarray):
                factor = self._buffer("factor", params)
                np.multiply(self.weight_decay, np.float32(-lr), out=factor)
                factor += np.float32(1)
                params *= factor
            else:  # torch: param.mul_(1 - lr * weight_decay)
                params *= np.float32(1 - lr * self.weight_decay)
        return grads


def decay_vector(weight_decay: float, size: int, undecayed: list[slice]) -> np.ndarray:
    """weight_decay for every element of a parameter vector of `size`, 0 in the `undecayed` ranges."""
    out = np.full(size, weight_decay, np.float32)
    for part in undecayed:
        out[part] = 0
    return out


def _decay(weight_decay):
    return np.asarray(weight_decay, np.float32) if isinstance(weight_decay, np.ndarray) else float(weight_decay)


def _negative(weight_decay) -> bool:
    return bool(np.any(np.asarray(weight_decay) < 0))


def _any(weight_decay) -> bool:
    return bool(np.any(weight_decay)) if isinstance(weight_decay, np.ndarray) else bool(weight_decay)


def _decayed(grads, params, weight_decay, out: np.ndarray) -> np.ndarray:
    """grads + weight_decay * params into `out` (torch's grad.add(param, alpha=weight_decay))."""
    np.multiply(params, weight_decay if isinstance(weight_decay, np.ndarray) else np.float32(weight_decay), out=out)
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
    """An optimizer by name ('sgd', 'adam' or 'adamw') with its options; ValueError for unknown names or
    options (saying which options the optimizer takes)."""
    classes = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
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
    if schedule == "onecycle":
        raise ValueError("the onecycle schedule changes the rate every step: use step_rate")
    raise ValueError(f"unknown schedule '{schedule}'; expected one of {', '.join(SCHEDULES)}")


def _no_options(schedule: str, kw: dict, allowed: tuple) -> None:
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
        raise ValueError(f"the {schedule} schedule has no option {', '.join(unknown)} ({takes})")


def step_rate(schedule: str, base_lr: float, epoch: int, epochs: int, step: int, steps: int,
              warmup: int = 0, **kw) -> float:
    """The learning rate of step `step` (0-based) of epoch `epoch`, of `steps` an epoch.

    `onecycle` is OneCycleLR(max_lr=base_lr, total_steps=epochs * steps, pct_start=warmup / epochs
    (0.3 without a warmup), anneal_strategy='cos', div_factor=25, final_div_factor=1e4,
    cycle_momentum=False). Any other schedule gives the epoch's rate (`learning_rate`), times
    (i + 1) / (warmup * steps) for the first warmup * steps steps i of the run."""
    if schedule == "onecycle":
        _no_options(schedule, kw, ())
        return one_cycle(base_lr, epoch * steps + step, epochs * steps, warmup / epochs if warmup else 0.3)
    rate = learning_rate(schedule, base_lr, epoch, epochs, **kw)
    done = epoch * steps + step
    if warmup and done < warmup * steps:
        rate *= (done + 1) / (warmup * steps)
    return rate


def one_cycle(max_lr: float, step: int, total_steps: int, pct_start: float = 0.3,
              div_factor: float = 25.0, final_div_factor: float = 1e4) -> float:
    """OneCycleLR's rate at `step` (its two-phase cosine form, as torch computes it)."""
    initial = max_lr / div_factor
    final = initial / final_div_factor
    peak = float(pct_start * total_steps) - 1
    phases = [(peak, initial, max_lr), (total_steps - 1, max_lr, final)]  # (end step, first rate, last rate)
    start = 0.0
    for i, (end, first, last) in enumerate(phases):
        if step <= end or i == len(phases) - 1:
            pct = (step - start) / (end - start) if end != start else 1.0
            return last + (first - last) / 2.0 * (math.cos(math.pi * pct) + 1)
        start = end
    raise AssertionError("unreachable")
