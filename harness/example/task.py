"""The Caffe LSTM's example: an LSTM learns to generate a fixed sequence from zero input.

Any registered implementation runs it through the harness's contract (forward, backward,
set_weights), with a linear head to one output written here by hand. Facts of the task:
target f(t) = 0.5 sin(2t) - 0.05 cos(17t + 0.8) + 0.05 sin(25t + 10) - 0.02 cos(45t + 0.3)
at t = 0.01 i, scaled by max |f| then centred; batch 1; chunks of 320 steps, the state carried
from chunk to chunk with gradients stopped at the boundary; Gaussian init (std 0.1), forget-gate
bias 5; Euclidean loss sum(err^2) / (2 * 320); SGD with momentum 0.95.

As the Caffe LSTM's LSTM layer, each layer trains ONE bias (the contract's b_ih; b_hh stays zero): training
both, as torch.nn.LSTM's parametrisation would, moves every bias at twice the Caffe LSTM's rate. The Caffe LSTM's
per-parameter learning-rate multipliers (only deep_lstm_short's first-layer bias: 2) are configuration
(SeqConfig.lr_mults), and a run can add its own (`--lr-mult out.bias=2`: the Caffe LSTM's older solvers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from harness.contract.impl import Impl
from harness.contract.inputs import LayerWeights
from harness.contract.problem import Problem

CHUNK = 320
INPUT_SIZE = 1  # the input is all zeros; its width does not matter, so keep it minimal
GATE_CLIP = 0.1  # the Caffe LSTM's clipping_threshold on gate pre-activation gradients
CLIPPING_MODES = ("auto", "gate", "norm", "none")


BIAS_CHOICES = (1, 2)  # trained biases per LSTM layer: 1 the Caffe LSTM's, 2 torch.nn.LSTM's b_ih and b_hh


@dataclass(frozen=True)
class SeqConfig:
    name: str
    layers: int
    hidden: int
    length: int
    lr: float
    lr_mults: tuple[tuple[str, float], ...] = ()  # (parameter name, learning-rate multiplier): the Caffe LSTM's nets

    @property
    def about(self) -> str:
        return f"{self.layers} layer(s) x {self.hidden} hidden, sequence length {self.length}"

    def parameter_names(self, biases: int = 1) -> list[str]:
        """The trained parameters' names, in Network.parameters() order (what --lr-mult may name)."""
        bias = ["bias"] if biases == 1 else ["b_ih", "b_hh"]
        return [f"lstm{l + 1}.{n}" for l in range(self.layers) for n in ("w_ih", "w_hh", *bias)] + [
            "out.weight", "out.bias"]


CONFIGS = {c.name: c for c in (
    SeqConfig("lstm_short", layers=1, hidden=15, length=320, lr=1e-4),
    SeqConfig("lstm_long", layers=1, hidden=50, length=960, lr=1e-4),
    SeqConfig("deep_lstm_short", layers=3, hidden=7, length=320, lr=1e-4, lr_mults=(("lstm1.bias", 2.0),)),
    SeqConfig("deep_lstm_long", layers=3, hidden=23, length=960, lr=5e-5),
)}


def lr_multipliers(config: SeqConfig, biases: int = 1, extra: dict[str, float] | None = None) -> dict[str, float]:
    """Every trained parameter's learning-rate multiplier: 1, the configuration's, then `extra`'s (a run's
    --lr-mult); a name that is no parameter of the network is a ValueError naming the known ones."""
    names = config.parameter_names(biases)
    mults = dict.fromkeys(names, 1.0)
    for source, given in (("the configuration", dict(config.lr_mults)), ("--lr-mult", extra or {})):
        for name, mult in given.items():
            # With two biases a layer, lstmL.bias (the Caffe LSTM's one) stands for both.
            targets = [f"{name[:-len('bias')]}{b}" for b in ("b_ih", "b_hh")] \
                if biases == 2 and name.startswith("lstm") and name.endswith(".bias") else [name]
            for target in targets:
                if target not in mults:
                    raise ValueError(f"{source} names {name!r}, not a parameter of {config.name} with {biases} "
                                     f"bias(es) a layer; its parameters: {', '.join(names)}")
                mults[target] = float(mult)
    return mults


def describe_lr_mults(mults: dict[str, float]) -> str:
    special = [f"{name} x{mult:g}" for name, mult in mults.items() if mult != 1.0]
    return ", ".join(special) if special else "none"


def target_sequence(length: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    t = 0.01 * torch.arange(length, dtype=torch.float64)
    f = (0.5 * torch.sin(2 * t) - 0.05 * torch.cos(17 * t + 0.8)
         + 0.05 * torch.sin(25 * t + 10) - 0.02 * torch.cos(45 * t + 0.3))
    f = f / f.abs().max()
    return (f - f.mean()).to(dtype=dtype, device=device)


@dataclass
class Network:
    lstm: list[LayerWeights]  # canonical layout, the single source of truth for the weights
    w_out: torch.Tensor  # [1, H]
    b_out: torch.Tensor  # [1]
    biases: int = 1  # trained biases a layer: with 1, b_hh stays zero and b_ih is the layer's one bias

    def parameters(self) -> list[torch.Tensor]:
        """The trained tensors, in SeqConfig.parameter_names order."""
        return [t for w in self.lstm for t in self._trained(w.tensors())] + [self.w_out, self.b_out]

    def gradients(self, layer_grads: list[LayerWeights], d_w_out, d_b_out) -> list[torch.Tensor]:
        """The gradients of parameters(), from an implementation's per-layer gradients and the head's."""
        return [t for w in layer_grads for t in self._trained(w.tensors())] + [d_w_out, d_b_out]

    def _trained(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return tensors if self.biases == 2 else tensors[:3]


def init_network(config: SeqConfig, seed: int = 0, dtype=torch.float64, device="cpu", biases: int = 1) -> Network:
    gen = torch.Generator().manual_seed(seed)
    H = config.hidden

    def gaussian(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.1).to(dtype=dtype, device=device)

    def zeros(*shape):
        return torch.zeros(*shape, dtype=dtype, device=device)

    layers = []
    for l in range(config.layers):
        b_ih = zeros(4 * H)
        b_ih[H:2 * H] = 5.0  # forget gate (canonical order i, f, g, o): remember by default
        width = INPUT_SIZE if l == 0 else H
        layers.append(LayerWeights(gaussian(4 * H, width), gaussian(4 * H, H), b_ih, zeros(4 * H)))
    if biases not in BIAS_CHOICES:
        raise ValueError(f"biases must be one of {BIAS_CHOICES}, got {biases!r}")
    return Network(layers, gaussian(1, H), zeros(1), biases)


def problem_for(config: SeqConfig, length: int, dtype: torch.dtype, device: str) -> Problem:
    """The harness problem one chunk (or one generated step) of `config` is."""
    return Problem(batch=1, length=length, input_size=INPUT_SIZE, hidden=config.hidden, layers=config.layers,
                   dtype=str(dtype).removeprefix("torch."), device=device)


def clipping_for(impl_cls: type[Impl], requested: str = "auto") -> str:
    """The Caffe LSTM clips gate gradients inside backward; an implementation that cannot (cuDNN)
    gets a global gradient-norm clip instead, and the caller says so."""
    if requested not in CLIPPING_MODES:
        raise ValueError(f"clipping must be one of {', '.join(CLIPPING_MODES)}, got {requested!r}")
    if requested == "auto":
        return "gate" if impl_cls.gate_clipping else "norm"
    if requested == "gate" and not impl_cls.gate_clipping:
        raise ValueError(f"{impl_cls.name} cannot clip gate gradients inside backward; use norm or none")
    return requested


def describe_clipping(mode: str, norm_clip: float) -> str:
    return {"gate": f"gate pre-activation gradients clamped to +-{GATE_CLIP} inside backward (the Caffe LSTM's)",
            "norm": f"global gradient norm clipped to {norm_clip} (the implementation cannot clip inside backward)",
            "none": "no clipping"}[mode]


@dataclass
class Trainer:
    """Truncated-BPTT training of one network through one implementation."""

    impl_cls: type[Impl]
    config: SeqConfig
    net: Network
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.95
    clipping: str = "gate"
    norm_clip: float = 1.0
    device: str = "cpu"
    lr_mults: dict[str, float] | None = None  # every parameter's multiplier (lr_multipliers); None: the config's
    losses: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        dtype = self.net.w_out.dtype
        self.impl = self.impl_cls(problem_for(self.config, CHUNK, dtype, self.device), self.net.lstm)
        self.target = target_sequence(self.config.length, dtype, self.device)
        self.chunks = math.ceil(self.config.length / CHUNK)
        self.x = torch.zeros(CHUNK, 1, INPUT_SIZE, dtype=dtype, device=self.device)
        self.zero_state = torch.zeros(self.config.layers, 1, self.config.hidden, dtype=dtype, device=self.device)
        self.h, self.c = self.zero_state, self.zero_state
        if self.lr_mults is None:
            self.lr_mults = lr_multipliers(self.config, self.net.biases)
        names = self.config.parameter_names(self.net.biases)
        if sorted(self.lr_mults) != sorted(names):
            raise ValueError(f"lr_mults must name exactly the parameters {', '.join(names)}")
        # One group per parameter, its rate lr x multiplier: with a fixed rate, torch's SGD (v = m v + g;
        # w -= lr v) is Caffe's (v = m v + lr g; w -= v).
        groups = [{"params": [p], "lr": self.lr * self.lr_mults[n]}
                  for n, p in zip(names, self.net.parameters(), strict=True)]
        if self.optimizer == "sgd":
            self.opt = torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum)
        elif self.optimizer == "adam":
            self.opt = torch.optim.Adam(groups, lr=self.lr)
        else:
            raise ValueError(f"optimizer must be sgd or adam, got {self.optimizer!r}")
        self.iteration = 0

    def step(self) -> float:
        """One iteration: the next 320-step chunk, forward, loss, backward, update."""
        chunk = self.iteration % self.chunks
        if chunk == 0:  # a new pass over the sequence starts from a zero state
            self.h, self.c = self.zero_state, self.zero_state
        target = self.target[chunk * CHUNK:(chunk + 1) * CHUNK]
        out = self.impl.forward(self.x, self.h, self.c)
        y = out.y[:, 0, :]  # [T, H]
        err = (y @ self.net.w_out.t() + self.net.b_out)[:, 0] - target
        loss = float(err.square().sum()) / (2 * CHUNK)
        d_pred = err / CHUNK
        d_w_out, d_b_out = (d_pred @ y)[None], d_pred.sum()[None]
        dy = (d_pred[:, None] * self.net.w_out)[:, None, :]  # [T, 1, H]
        # State carried to the next chunk; no gradient flows back across the boundary.
        self.h, self.c = out.h_n.detach().clone(), out.c_n.detach().clone()
        grads = self.impl.backward(dy, torch.zeros_like(self.h), torch.zeros_like(self.c),
                                   **({"gate_clip": GATE_CLIP} if self.clipping == "gate" else {}))
        flat = self.net.gradients(grads.weights, d_w_out, d_b_out)
        params = self.net.parameters()
        for p, g in zip(params, flat, strict=True):
            # A copy: gradients may alias one another (autograd hands b_ih and b_hh one tensor)
            # or an implementation's workspace, and the clip and the optimizer work in place.
            p.grad = g.to(dtype=p.dtype, copy=True)
        if self.clipping == "norm":
            torch.nn.utils.clip_grad_norm_(params, self.norm_clip)  # scales every .grad in place
        self.opt.step()
        self.impl.set_weights(self.net.lstm)
        self.iteration += 1
        self.losses.append(loss)
        return loss


def generate(impl_cls: type[Impl], net: Network, config: SeqConfig, device: str = "cpu") -> torch.Tensor:
    """Run `length` single steps from a zero state with zero input, state carried: predictions."""
    dtype = net.w_out.dtype
    impl = impl_cls(problem_for(config, 1, dtype, device), net.lstm)
    x = torch.zeros(1, 1, INPUT_SIZE, dtype=dtype, device=device)
    h = c = torch.zeros(config.layers, 1, config.hidden, dtype=dtype, device=device)
    predictions = torch.empty(config.length, dtype=dtype, device=device)
    for step in range(config.length):
        out = impl.forward(x, h, c)
        predictions[step] = (out.y[0, 0] @ net.w_out[0] + net.b_out[0])
        h, c = out.h_n.detach().clone(), out.c_n.detach().clone()
    return predictions


def nmse(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared error over the variance of the target."""
    return float((prediction - target).square().mean() / target.var(unbiased=False))
