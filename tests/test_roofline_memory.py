from types import SimpleNamespace

import pytest
import torch

from harness.contract.inputs import make_inputs
from harness.contract.problem import Problem
from harness.contract.registry import discover
from harness.measuring import roofline
from harness.measuring.memory import saved_bytes
from harness.measuring.roofline import WARMUP_SECONDS, measure_ceiling


def test_ceiling_is_measured_once_and_described():
    ceiling = measure_ceiling("cpu", "float32", size=256, repeats=3)
    assert ceiling.gflops > 0.1
    assert measure_ceiling("cpu", "float32", size=256, repeats=3) is ceiling
    assert "256 x 256 x 256" in ceiling.how and "median of 3" in ceiling.how and "torch.mm" in ceiling.how
    assert "after 200 ms of warm-up" in ceiling.how and ceiling.warmup_seconds == WARMUP_SECONDS == 0.2
    assert ceiling.gflops == max(rate for _, rate in ceiling.by_library)
    assert ceiling.as_dict()["gflops"] == ceiling.gflops


class FakeClock:
    """roofline's time.perf_counter, moved on only by the fake products it times."""

    def __init__(self, product_seconds: float) -> None:
        self.now, self.product_seconds, self.products = 100.0, product_seconds, 0

    def perf_counter(self) -> float:
        return self.now

    def product(self) -> None:
        self.now += self.product_seconds
        self.products += 1


@pytest.fixture
def clock(monkeypatch):
    def install(product_seconds):
        fake = FakeClock(product_seconds)
        monkeypatch.setattr(roofline, "time", SimpleNamespace(perf_counter=fake.perf_counter))
        return fake
    return install


def test_warm_up_runs_products_until_its_duration_has_passed(clock):
    fake = clock(0.03)
    assert roofline._warm_up(fake.product, "cpu", WARMUP_SECONDS) == fake.products == 7  # 6 x 30 ms < 200 ms
    assert fake.now - 100.0 >= WARMUP_SECONDS


def test_a_slow_product_still_warms_up_once_and_stops(clock):
    fake = clock(1.5)
    assert roofline._warm_up(fake.product, "cpu", WARMUP_SECONDS) == fake.products == 1


def test_the_measurement_after_warm_up_is_unchanged(clock):
    fake = clock(0.06)
    rate = roofline._median_gflops(fake.product, 1000, 3, "cpu")
    assert fake.products == 4 + 3  # warm-up past 200 ms, then the measured products
    assert rate == pytest.approx(2 * 1000**3 / 0.06 / 1e9)


def test_saved_bytes_of_hand_written_impls_are_their_activation_buffers():
    p = Problem(batch=4, length=10, input_size=6, hidden=8, layers=2)
    inputs = make_inputs(p)
    per_layer = 4 * (10 * 4 * 32 + 2 * 11 * 4 * 8 + 10 * 4 * 8)  # gates; h, c (T+1 rows); tanh_c (T rows)
    for name in ("fused", "numpy"):
        impl = discover().get(name)(p, inputs.weights)
        assert saved_bytes(impl, inputs) == 2 * per_layer, name


def test_saved_bytes_of_autograd_impls_are_hooked_and_exclude_weights_and_inputs():
    p = Problem(batch=4, length=10, input_size=6, hidden=8, layers=2)
    inputs = make_inputs(p)
    modular = discover().get("modular")(p, inputs.weights)
    measured = saved_bytes(modular, inputs)
    weights = sum(t.nbytes for w in inputs.weights for t in w.tensors())
    gates = 2 * 10 * 4 * 32 * 4  # at least one gate-sized tensor per step and layer is kept
    assert gates <= measured < gates * 6
    # Grows with the sequence, not with the weights: twice the steps, about twice the bytes.
    longer = p.replace(length=20)
    modular_long = discover().get("modular")(longer, make_inputs(longer).weights)
    assert 1.8 < saved_bytes(modular_long, make_inputs(longer)) / measured < 2.2
    assert measured != weights


def test_peak_memory_is_cuda_only():
    from harness.measuring.memory import peak_bytes

    assert peak_bytes(lambda: torch.ones(10), "cpu") is None
