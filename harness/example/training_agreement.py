"""Agreement over training: the same run through two implementations must give the same
loss curve and the same final weights, which checks agreement over many steps, not one."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.contract.agreement import relative_error
from harness.contract.impl import Impl
from harness.contract.problem import Problem, dtype_support
from harness.example.task import CHUNK, CONFIGS, Trainer, init_network, problem_for

# float64 runs of correct implementations start 1e-16 apart; training amplifies that (measured:
# up to 3e-12 after 200 Adam iterations, 2e-15 with the Caffe LSTM's SGD and gate clipping; a global
# norm clip amplifies it chaotically, to 1e-2, so it is not used here). A planted bug moves the
# curves by 1e-3 or more within a few iterations.
CURVE_TOLERANCE = 1e-9
WEIGHT_TOLERANCE = 1e-9

# The two training set-ups checked: the Caffe project's (SGD, momentum, gate clipping), which only
# implementations that clip inside backward can run, and one every implementation can run.
SETUPS = {
    "caffe": {"optimizer": "sgd", "clipping": "gate", "lr": None},
    "adam": {"optimizer": "adam", "clipping": "none", "lr": 1e-3},
}


BIASES = 2


@dataclass
class TrainingRun:
    impl: str
    losses: torch.Tensor
    weights: list[torch.Tensor]


def training_problem(device: str, config: str = "lstm_short") -> Problem | None:
    """The problem every training step of `config` builds, in float64 on `device` (what decides
    which implementations can train there); None where the device has no real float64."""
    if not dtype_support(device, "float64").ok:
        return None  # the tolerances above are float64's
    return problem_for(CONFIGS[config], CHUNK, torch.float64, device)


def train(impl_cls: type[Impl], setup: str = "adam", config: str = "lstm_short", iterations: int = 200,
          dtype=torch.float64, seed: int = 0, device: str = "cpu") -> TrainingRun:
    cfg, s = CONFIGS[config], SETUPS[setup]
    # Both biases trained (not the Caffe LSTM's one): agreement then covers every gradient an implementation returns.
    net = init_network(cfg, seed, dtype, device, BIASES)
    trainer = Trainer(impl_cls, cfg, net, lr=s["lr"] or cfg.lr, optimizer=s["optimizer"], clipping=s["clipping"],
                      device=device)
    for _ in range(iterations):
        trainer.step()
    return TrainingRun(impl_cls.name, torch.tensor(trainer.losses, dtype=torch.float64),
                       [p.detach().clone() for p in net.parameters()])


def training_gaps(a: TrainingRun, b: TrainingRun) -> dict[str, float]:
    """Largest relative gap of the loss curves, and of any final weight tensor."""
    curve = float((a.losses - b.losses).abs().max() / b.losses.abs().max())
    weights = max(relative_error(x, y.double()) for x, y in zip(a.weights, b.weights, strict=True))
    return {"curve": curve, "weights": weights}


def agrees(gaps: dict[str, float]) -> bool:
    return gaps["curve"] <= CURVE_TOLERANCE and gaps["weights"] <= WEIGHT_TOLERANCE
