"""Training agreement runs on the device under test (CUDA on a GPU run), in float64: checked here
without a GPU, with implementations that record what they were asked to build and never compute."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness.contract.impl import Impl, Support
from harness.contract.registry import Registration
from harness.example import training_agreement
from harness.example.task import CHUNK, CONFIGS
from harness.example.training_agreement import TrainingRun, train, training_problem

SUITE = Path(__file__).resolve().parent.parent / "suites" / "test_training.py"


class _Built(Exception):
    """Stops training once the implementation is built: there is no GPU to go on with."""


class Recorder(Impl):
    """Records the problems it is asked about (supports) and built with (__init__)."""

    name = "recorder"
    description = "records its problems"
    gate_clipping = True
    seen: list  # a fresh list per subclass (the `recorders` fixture)

    @classmethod
    def supports(cls, problem):
        cls.seen.append(problem)
        return Support.yes()

    def __init__(self, problem, weights):
        type(self).seen.append(problem)
        raise _Built

    def forward(self, x, h0, c0):
        raise NotImplementedError

    def backward(self, dy, dh_n, dc_n, gate_clip=None):
        raise NotImplementedError


@pytest.fixture
def recorders():
    return [type(f"Recorder{k}", (Recorder,), {"name": f"recorder{k}", "seen": []}) for k in range(2)]


def test_training_problem_is_the_chunk_in_float64_on_the_device():
    cfg = CONFIGS["lstm_short"]
    for device in ("cpu", "cuda"):
        problem = training_problem(device)
        assert (problem.device, problem.dtype) == (device, "float64")
        assert (problem.batch, problem.length, problem.hidden, problem.layers) == (1, CHUNK, cfg.hidden, cfg.layers)


def test_train_builds_network_and_implementation_on_the_device(monkeypatch, recorders):
    devices = []
    real_init = training_agreement.init_network

    def init_on_cpu(config, seed, dtype, device, biases=1):  # records the device, builds where this machine can
        devices.append(device)
        return real_init(config, seed, dtype, "cpu", biases)

    monkeypatch.setattr(training_agreement, "init_network", init_on_cpu)
    with pytest.raises(_Built):
        train(recorders[0], "adam", iterations=1, device="cuda")
    assert devices == ["cuda"]
    assert [(p.device, p.dtype) for p in recorders[0].seen] == [("cuda", "float64")]


def load_suite(monkeypatch):
    spec = importlib.util.spec_from_file_location("training_suite_under_test", SUITE)
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    calls = []

    def fake_train(impl_cls, setup, config, iterations, device="cpu"):
        calls.append((impl_cls.name, device))
        losses = torch.linspace(1.0, 0.01, iterations, dtype=torch.float64)  # falls, and the same for all
        return TrainingRun(impl_cls.name, losses, [torch.ones(3, dtype=torch.float64)])

    monkeypatch.setattr(suite, "train", fake_train)
    return suite, calls


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_training_suite_trains_on_the_runs_device(monkeypatch, recorders, device):
    suite, calls = load_suite(monkeypatch)
    session = SimpleNamespace(settings=SimpleNamespace(device=device,
                                                       impls=[Registration(cls, "test") for cls in recorders]))
    suite.test_training_agrees_for_every_pair(session, "adam")
    assert sorted(calls) == [("recorder0", device), ("recorder1", device)]
    for cls in recorders:
        assert [(p.device, p.dtype, p.length) for p in cls.seen] == [(device, "float64", CHUNK)]
