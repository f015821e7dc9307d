"""The seeded canonical tensors every implementation receives for a Problem, and its input sets.

Canonical layout is torch.nn.LSTM's: time-major x[T, B, I], h0/c0[L, B, H], and per layer
W_ih[4H, I_l], W_hh[4H, H], b_ih[4H], b_hh[4H] with gates ordered i, f, g, o.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.contract.problem import Problem


@dataclass
class LayerWeights:
    w_ih: torch.Tensor  # [4H, I_l]
    w_hh: torch.Tensor  # [4H, H]
    b_ih: torch.Tensor  # [4H]
    b_hh: torch.Tensor  # [4H]

    FIELDS = ("w_ih", "w_hh", "b_ih", "b_hh")

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f) for f in self.FIELDS]

    def map(self, fn) -> LayerWeights:
        return LayerWeights(*(fn(t) for t in self.tensors()))

    @classmethod
    def from_flat(cls, tensors) -> list[LayerWeights]:
        """Per-layer weights from one flat sequence, four tensors a layer in FIELDS order."""
        tensors = list(tensors)
        if len(tensors) % len(cls.FIELDS):
            raise ValueError(f"{len(tensors)} tensors is not a whole number of layers of {len(cls.FIELDS)}")
        n = len(cls.FIELDS)
        return [cls(*tensors[i:i + n]) for i in range(0, len(tensors), n)]


@dataclass
class Inputs:
    """Everything one forward + backward consumes, identical for every implementation."""

    x: torch.Tensor  # [T, B, I]
    h0: torch.Tensor  # [L, B, H]
    c0: torch.Tensor  # [L, B, H]
    weights: list[LayerWeights]
    dy: torch.Tensor  # upstream gradient of y [T, B, H]
    dh_n: torch.Tensor  # upstream gradient of h_n [L, B, H]
    dc_n: torch.Tensor  # upstream gradient of c_n [L, B, H]

    def map(self, fn) -> Inputs:
        return Inputs(fn(self.x), fn(self.h0), fn(self.c0), [w.map(fn) for w in self.weights],
                      fn(self.dy), fn(self.dh_n), fn(self.dc_n))

    def to(self, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> Inputs:
        return self.map(lambda t: t.to(device=device, dtype=dtype).contiguous())

    def named(self) -> dict[str, torch.Tensor]:
        named = {"x": self.x, "h0": self.h0, "c0": self.c0}
        for layer, w in enumerate(self.weights):
            named.update({f"{f}[{layer}]": t for f, t in zip(LayerWeights.FIELDS, w.tensors(), strict=True)})
        return {**named, "dy": self.dy, "dh_n": self.dh_n, "dc_n": self.dc_n}


# Input sets of one grid point. Set 0 is what agreement checks first; ZERO_STATE_SET is set 0's weights and
# sequence with h0 = c0 = 0 (what torch.nn.LSTM runs when given no state: the commonest call of all), checked
# before timing too. Every call of the timed rounds gets values of its own (fresh_inputs), so no call can pass,
# or be fast, by returning what an earlier call computed.
AGREEMENT_SET = 0
ZERO_STATE_SET = "zero state"
# One timed set in ZERO_STATE_EVERY has a zero initial state, so the timed calls include the common case.
ZERO_STATE_EVERY = 4
FRESH_STREAM = 2**20  # generator streams of the timed rounds' sets, apart from the numbered and saturating ones
# The saturating set: each bias uniform in +-SATURATING_BIAS and layer 0's input uniform in
# +-SATURATING_INPUT drive gate pre-activations to |z| of 80 to 110 (the ordinary sets stay below
# 1), where a tanh or sigmoid written as a naive exp overflows. Only biases and inputs are
# scaled: recurrent weights of ordinary size keep the recurrence from amplifying rounding, so a
# correct float32 LSTM still meets the ordinary tolerance (measured: 6e-7 .. 4e-6).
SATURATING_BIAS = 40.0
SATURATING_INPUT = 30.0
# Long enough for cell states to pass 44 (where a naive tanh's exp(2c) overflows in float32);
# no longer, because c grows about one per step when the gates saturate, and with it the
# rounding of a correct float32 LSTM (measured: 4e-6 at 100 steps, 1e-5 at 300).
SATURATING_LENGTH = 64
# What saturation breaks (an exp that overflows, a NaN from inf - inf) does not depend on the batch;
# above 8 rows the check only costs more: denormals make saturated arithmetic slow (measured at
# batch 20 x length 64: 8 s for torch.nn.LSTM on the 2-core CPU). Two rows or more still catch
# row-mixing bugs.
SATURATING_BATCH = 8
SATURATING = "saturating"  # the name of the saturating set wherever sets are named
SATURATING_STREAM = 2**16  # generator streams of the saturating set, apart from the numbered sets


def _stream_seed(seed: int, stream: int) -> int:
    """A generator seed for input set `stream` of `seed`, distinct per (seed, stream), also in its low 32 bits
    (all the CPU generator keeps) for streams below 2**32."""
    return (seed * 1_000_003 + stream * 7_919) % 2**63


def _draw_inputs(problem: Problem, seed: int, variant: int) -> Inputs:
    """float64 CPU tensors: weights from `seed`'s stream, everything else from `variant`'s."""
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(problem.hidden)
    T, B, H, L = problem.length, problem.batch, problem.hidden, problem.layers

    def draw(*shape: int) -> torch.Tensor:
        t = (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        # Exact zeros have probability ~0, but make the promise unconditional.
        return torch.where(t == 0, torch.full_like(t, bound / 2), t)

    weights = [
        LayerWeights(draw(4 * H, problem.layer_input_size(l)), draw(4 * H, H), draw(4 * H), draw(4 * H))
        for l in range(L)
    ]
    if variant != AGREEMENT_SET:
        gen = torch.Generator().manual_seed(_stream_seed(seed, variant))
    return Inputs(
        x=draw(T, B, problem.input_size), h0=draw(L, B, H), c0=draw(L, B, H), weights=weights,
        dy=draw(T, B, H), dh_n=draw(L, B, H), dc_n=draw(L, B, H),
    )


def make_inputs(problem: Problem, seed: int = 0, variant: int = AGREEMENT_SET) -> Inputs:
    """Seeded tensors for `problem`, in its dtype and on its device.

    Everything is drawn uniform in +-1/sqrt(H) (nn.LSTM's weight init) on the CPU in float64,
    then rounded to the problem's dtype, so a given (problem, seed, variant) is the same data on
    every machine and the float64 reference can start from the very same values. The weights
    depend on the random seed only: every input set of a point runs through one prepared
    implementation. Nothing is zero: zeros can run faster than real data and hide bugs.
    """
    if isinstance(variant, bool) or not isinstance(variant, int) or not 0 <= variant < SATURATING_STREAM:
        raise ValueError(f"variant must be an integer in [0, {SATURATING_STREAM}), got {variant!r}")
    return _draw_inputs(problem, seed, variant).to(dtype=problem.torch_dtype, device=problem.device)


def saturating_problem(problem: Problem) -> Problem:
    """The point with its length capped at SATURATING_LENGTH and its batch at SATURATING_BATCH:
    what the saturating set runs on."""
    return problem.replace(length=min(problem.length, SATURATING_LENGTH), batch=min(problem.batch, SATURATING_BATCH))


def saturating_inputs(problem: Problem, seed: int = 0) -> Inputs:
    """Inputs of `problem` with biases and layer 0's input scaled into the saturating range."""
    inputs = _draw_inputs(problem, seed, SATURATING_STREAM)
    gen = torch.Generator().manual_seed(_stream_seed(seed, SATURATING_STREAM + 1))

    def spread(like: torch.Tensor, bound: float) -> torch.Tensor:
        return (torch.rand(like.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound

    inputs.x = spread(inputs.x, SATURATING_INPUT)
    inputs.weights = [LayerWeights(w.w_ih, w.w_hh, spread(w.b_ih, SATURATING_BIAS), spread(w.b_hh, SATURATING_BIAS))
                      for w in inputs.weights]
    return inputs.to(dtype=problem.torch_dtype, device=problem.device)


def zero_state(inputs: Inputs) -> Inputs:
    """`inputs` with h0 = c0 = 0 (new tensors; the rest shared)."""
    return Inputs(inputs.x, torch.zeros_like(inputs.h0), torch.zeros_like(inputs.c0), inputs.weights,
                  inputs.dy, inputs.dh_n, inputs.dc_n)


def input_set(problem: Problem, seed: int, which: int | str) -> Inputs:
    """Numbered set `which`, the saturating set for SATURATING, set 0 with a zero state for ZERO_STATE_SET."""
    if which == SATURATING:
        return saturating_inputs(problem, seed)
    if which == ZERO_STATE_SET:
        return zero_state(make_inputs(problem, seed))
    return make_inputs(problem, seed, which)


PHASE_STREAMS = {"forward": 0, "backward": 1, "total": 2}


def fresh_inputs(problem: Problem, weights: list[LayerWeights], seed: int, phase: str, number: int) -> Inputs:
    """The values of call `number` of a phase's timed rounds at `problem`: x, h0, c0 and the upstream
    gradients drawn afresh (uniform in +-1/sqrt(H), never exactly zero) in the problem's dtype on its
    device, `weights` as given. The same (seed, phase, number) gives the same values, so every
    implementation of a point can run, and be checked on, the same sets while none sees one twice; every
    ZERO_STATE_EVERY-th set has h0 = c0 = 0. Drawn directly on the device: cheap next to a call."""
    if phase not in PHASE_STREAMS:
        raise ValueError(f"unknown phase {phase!r}")
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise ValueError(f"number must be a non-negative integer, got {number!r}")
    if number >= 2**24:
        raise ValueError(f"number must be below 2**24, got {number}")
    # The CPU generator keeps only the low 32 bits of its seed: streams stay distinct there (_stream_seed
    # multiplies by an odd number, a bijection modulo 2**32).
    stream = FRESH_STREAM + PHASE_STREAMS[phase] * 2**24 + number
    gen = torch.Generator(device=problem.device).manual_seed(_stream_seed(seed, stream))
    bound = 1.0 / math.sqrt(problem.hidden)
    T, B, H, L = problem.length, problem.batch, problem.hidden, problem.layers
    # float32 draws (torch.rand has no bfloat16/float16 path on every device), rounded to the dtype.
    draw_dtype = torch.float64 if problem.torch_dtype == torch.float64 else torch.float32

    def draw(*shape: int) -> torch.Tensor:
        t = (torch.rand(*shape, generator=gen, device=problem.device, dtype=draw_dtype) * 2 - 1) * bound
        t = t.to(problem.torch_dtype)
        return t.masked_fill_(t == 0, bound / 2)

    x, h0, c0 = draw(T, B, problem.input_size), draw(L, B, H), draw(L, B, H)
    if number % ZERO_STATE_EVERY == ZERO_STATE_EVERY - 1:
        h0.zero_(), c0.zero_()
    return Inputs(x=x, h0=h0, c0=c0, weights=weights, dy=draw(T, B, H), dh_n=draw(L, B, H), dc_n=draw(L, B, H))


def max_preactivation(inputs: Inputs) -> float:
    """Largest |gate pre-activation| from layer 0's input projection and biases (the recurrent
    part left out): how far into saturation `inputs` drive the gates, cheaply."""
    w = inputs.weights[0]
    x = inputs.x.to(torch.float64)
    z = x @ w.w_ih.to(torch.float64).t() + (w.b_ih + w.b_hh).to(torch.float64)
    return float(z.abs().max())
