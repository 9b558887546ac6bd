"""cnnc.train.optim against torch.optim: every option, lr overrides, state save/load, schedules."""
from __future__ import annotations

import io

import numpy as np
import pytest

from cnnc.train.optim import SGD, Adam, AdamW, decay_vector, learning_rate, make_optimizer, one_cycle, step_rate

torch = pytest.importorskip("torch")

N = 1001  # not a multiple of any SIMD width, so vector tails are exercised
STEPS = 8

SGD_OPTIONS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.1, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.8, weight_decay=5e-3),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
]
ADAM_OPTIONS = [
    dict(lr=1e-3),
    dict(lr=1e-2, betas=(0.8, 0.99)),
    dict(lr=1e-2, betas=(0.5, 0.9), eps=1e-4),
    dict(lr=1e-2, weight_decay=1e-2),
    dict(lr=3e-3, betas=(0.95, 0.9999), eps=1e-6, weight_decay=0.1),
]
ADAMW_OPTIONS = [
    dict(lr=1e-3),  # torch's default decay, 0.01
    dict(lr=1e-2, weight_decay=0.05),
    dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.3),
]
CASES = ([("sgd", kw) for kw in SGD_OPTIONS] + [("adam", kw) for kw in ADAM_OPTIONS]
         + [("adamw", kw) for kw in ADAMW_OPTIONS])
TORCH = {"sgd": lambda: torch.optim.SGD, "adam": lambda: torch.optim.Adam, "adamw": lambda: torch.optim.AdamW}


def assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Equal to 1e-6 relative to the vector's scale (float32 rounding is ~1.2e-7 a step)."""
    scale = float(np.abs(theirs).max())
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6 * scale)


class TorchTwin:
    """The same parameter vector under the torch optimizer, for side-by-side stepping."""

    def __init__(self, name: str, params: np.ndarray, kw: dict):
        self.param = torch.nn.Parameter(torch.from_numpy(params.copy()))
        self.opt = TORCH[name]()([self.param], **kw)

    def step(self, grads: np.ndarray, lr: float | None = None) -> None:
        if lr is not None:
            self.opt.param_groups[0]["lr"] = lr
        self.param.grad = torch.from_numpy(grads.copy())
        self.opt.step()

    @property
    def values(self) -> np.ndarray:
        return self.param.detach().numpy()


def gradients(seed: int, steps: int = STEPS):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(N).astype(np.float32) for _ in range(steps)]


def start(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(N).astype(np.float32)


@pytest.mark.parametrize("name, kw", CASES, ids=lambda v: str(v))
def test_matches_torch(name, kw):
    params = start()
    ours, twin = make_optimizer(name, **kw), TorchTwin(name, params, kw)
    for g in gradients(1):
        before = g.copy()
        ours.step(params, g)
        twin.step(g)
        np.testing.assert_array_equal(g, before)  # gradients are not modified
        assert_close(params, twin.values)


@pytest.mark.parametrize("name, kw", CASES, ids=lambda v: str(v))
def test_lr_override_per_step_matches_torch(name, kw):
    params = start(2)
    ours, twin = make_optimizer(name, **kw), TorchTwin(name, params, kw)
    for i, g in enumerate(gradients(3)):
        lr = kw["lr"] * (0.5 ** i)
        ours.step(params, g, lr=lr)
        twin.step(g, lr=lr)
        assert_close(params, twin.values)
    assert ours.lr == kw["lr"]  # the override lasts one step


def through_npz(state: dict) -> dict:
    """What a checkpoint does to a state dict: save into an .npz and read it back."""
    buffer = io.BytesIO()
    np.savez(buffer, **state)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


@pytest.mark.parametrize("name, kw", CASES, ids=lambda v: str(v))
def test_state_save_and_load_midway_continues_identically(name, kw):
    grads = gradients(4)
    straight_params = start(5)
    straight = make_optimizer(name, **kw)
    for g in grads:
        straight.step(straight_params, g)

    params = start(5)
    first = make_optimizer(name, **kw)
    for g in grads[:3]:
        first.step(params, g)
    state = through_npz(first.state_dict())
    for value in state.values():
        assert isinstance(value, np.ndarray)
    resumed = make_optimizer(name, **kw)
    resumed.load_state_dict(state)
    for g in grads[3:]:
        resumed.step(params, g)
    np.testing.assert_array_equal(params, straight_params)

    twin = TorchTwin(name, start(5), kw)
    for g in grads:
        twin.step(g)
    assert_close(params, twin.values)


def test_state_dict_before_any_step_and_of_the_other_kind():
    sgd = SGD(0.1, momentum=0.9)
    fresh = SGD(0.1, momentum=0.9)
    fresh.load_state_dict(through_npz(sgd.state_dict()))
    assert fresh.momentum_buffer is None
    adam = Adam(0.1)
    adam.load_state_dict(through_npz(Adam(0.1).state_dict()))
    assert adam.t == 0 and adam.exp_avg is None
    with pytest.raises(ValueError, match="sgd"):
        adam.load_state_dict(sgd.state_dict())


def test_state_dict_is_a_copy():
    params, g = start(), gradients(6, 1)[0]
    opt = SGD(0.1, momentum=0.9)
    opt.step(params, g)
    state = opt.state_dict()
    opt.step(params, g)
    np.testing.assert_array_equal(state["momentum_buffer"], g)


def test_argument_checks():
    with pytest.raises(ValueError):
        SGD(0.1, nesterov=True)  # Nesterov needs momentum, as in torch
    with pytest.raises(ValueError):
        Adam(0.1, betas=(1.0, 0.9))
    with pytest.raises(ValueError):
        SGD(-1.0)
    opt = SGD(0.1)
    with pytest.raises(ValueError, match="same length"):
        opt.step(np.zeros(3, np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="float32"):
        opt.step(np.zeros(3), np.zeros(3))


def test_make_optimizer():
    assert isinstance(make_optimizer("sgd", lr=0.1, momentum=0.9), SGD)
    assert isinstance(make_optimizer("Adam", lr=0.1), Adam)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'; expected one of sgd, adam"):
        make_optimizer("rmsprop", lr=0.1)
    with pytest.raises(ValueError, match="adam has no option momentum"):
        make_optimizer("adam", lr=0.1, momentum=0.9)


# ---------------------------------------------------------------------------------------------
# Schedules


def torch_lrs(scheduler_class, epochs: int, base_lr: float, **kw) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = scheduler_class(opt, **kw)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs


def test_constant_schedule():
    assert [learning_rate("constant", 0.05, e, 10) for e in range(10)] == [0.05] * 10


@pytest.mark.parametrize("step_size, gamma", [(1, 0.5), (3, 0.1), (4, 0.7)])
def test_step_schedule_matches_step_lr(step_size, gamma):
    ours = [learning_rate("step", 0.1, e, 12, step_size=step_size, gamma=gamma) for e in range(12)]
    theirs = torch_lrs(torch.optim.lr_scheduler.StepLR, 12, 0.1, step_size=step_size, gamma=gamma)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)


@pytest.mark.parametrize("epochs", [1, 5, 30])
def test_cosine_schedule_matches_cosine_annealing_lr(epochs):
    ours = [learning_rate("cosine", 0.1, e, epochs) for e in range(epochs)]
    theirs = torch_lrs(torch.optim.lr_scheduler.CosineAnnealingLR, epochs, 0.1, T_max=epochs)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-15)
    assert learning_rate("cosine", 0.1, epochs, epochs) == pytest.approx(0.0)


def test_schedule_errors():
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        learning_rate("linear", 0.1, 0, 10)
    with pytest.raises(ValueError, match="step_size"):
        learning_rate("step", 0.1, 0, 10)
    with pytest.raises(ValueError, match="no option gamma"):
        learning_rate("cosine", 0.1, 0, 10, gamma=0.5)


@pytest.mark.parametrize("epochs, steps, warmup", [(5, 7, 0), (4, 10, 1), (3, 1, 0), (10, 3, 2)])
def test_onecycle_matches_one_cycle_lr(epochs, steps, warmup):
    """Per step, as OneCycleLR without momentum cycling; warmup=N epochs sets pct_start=N/epochs."""
    pct = warmup / epochs if warmup else 0.3
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=epochs * steps, pct_start=pct,
                                                    cycle_momentum=False)
    theirs = []
    for _ in range(epochs * steps):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    ours = [step_rate("onecycle", 0.2, e, epochs, s, steps, warmup) for e in range(epochs) for s in range(steps)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert 0.19 < max(ours) <= 0.2
    if epochs * steps * pct >= 2:  # a warmup of a step at least: it starts at max_lr / div_factor
        assert ours[0] == pytest.approx(0.2 / 25)


def test_warmup_is_linear_per_step_then_the_schedule():
    steps, epochs = 4, 6
    rates = [step_rate("cosine", 0.1, e, epochs, s, steps, warmup=2) for e in range(epochs) for s in range(steps)]
    cosine = [learning_rate("cosine", 0.1, e, epochs) for e in range(epochs)]
    for i, rate in enumerate(rates[:8]):  # two epochs of 4 steps: (i + 1) / 8 of the epoch's rate
        assert rate == pytest.approx(cosine[i // steps] * (i + 1) / 8)
    assert rates[8:] == [cosine[e] for e in range(2, epochs) for _ in range(steps)]
    assert [step_rate("constant", 0.1, e, 3, s, 5) for e in range(3) for s in range(5)] == [0.1] * 15


def test_one_cycle_ends_near_zero():
    assert one_cycle(0.1, 99, 100) == pytest.approx(0.1 / 25 / 1e4)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_decay_vector_matches_torch_parameter_groups(name):
    """A per-element weight decay of 0 on some ranges is torch's second parameter group without decay."""
    kw = {"sgd": dict(lr=0.05, momentum=0.9, nesterov=True), "adam": dict(lr=1e-2), "adamw": dict(lr=1e-2)}[name]
    params, undecayed = start(7), [slice(0, 100), slice(500, 520)]
    mask = np.zeros(N, bool)
    for part in undecayed:
        mask[part] = True
    ours = make_optimizer(name, weight_decay=decay_vector(0.05, N, undecayed), **kw)
    decayed_t = torch.nn.Parameter(torch.from_numpy(params[~mask].copy()))
    plain_t = torch.nn.Parameter(torch.from_numpy(params[mask].copy()))
    twin = TORCH[name]()([{"params": [decayed_t], "weight_decay": 0.05}, {"params": [plain_t], "weight_decay": 0.0}],
                         **kw)
    for g in gradients(8):
        ours.step(params, g)
        decayed_t.grad, plain_t.grad = torch.from_numpy(g[~mask].copy()), torch.from_numpy(g[mask].copy())
        twin.step()
    assert_close(params[~mask], decayed_t.detach().numpy())
    assert_close(params[mask], plain_t.detach().numpy())


def test_adamw_decay_is_decoupled():
    """With a zero gradient Adam's L2 decay gives no step at all (m/sqrt(v) is 0/eps...); AdamW shrinks
    the weights by lr * weight_decay exactly."""
    params = start(9)
    before = params.copy()
    AdamW(0.1, weight_decay=0.5).step(params, np.zeros(N, np.float32))
    np.testing.assert_allclose(params, before * np.float32(1 - 0.05), rtol=1e-6)
    assert isinstance(make_optimizer("AdamW", lr=0.1), AdamW)
