"""Deliberately wrong LSTMs. Agreement must catch every one of them.

Each is the real fused algorithm with one bug planted through a seam of FusedLSTM.
`mutant_plugin` registers them for a run (`--lstm-plugin mutant_plugin`, tests/ on the path).
"""

import torch

from harness.contract.impl import Grads, Outputs
from impls.fused import FusedLSTM


def _next_call(impl) -> int:
    """Counts the calls of the one method a mutant counts on its instance: 1 on the first."""
    impl._calls = getattr(impl, "_calls", 0) + 1
    return impl._calls


class RowZeroRecurrence(FusedLSTM):
    """The Caffe LSTM's CPU bug: the recurrent product of batch row 0 is added to every row."""

    name = "mutant_row0"
    description = "recurrent product of batch row 0 added to every row"

    @staticmethod
    def _recurrent_product(layer, h_prev, x_proj):
        return x_proj + h_prev[:1] @ layer.w_h.t()


class WrongGateOrder(FusedLSTM):
    """Reads the canonical i, f, g, o block as if it were already i, f, o, g."""

    name = "mutant_gate_order"
    description = "gate block taken in the wrong order"

    @staticmethod
    def _gate_permutation(hidden):
        return torch.arange(4 * hidden)


class ForgetBiasOffByOne(FusedLSTM):
    """A forget-gate bias one too large (the 'forget bias = 1' convention applied twice)."""

    name = "mutant_forget_bias"
    description = "forget-gate bias off by one"

    @staticmethod
    def _combined_bias(w):
        bias = w.b_ih + w.b_hh
        hidden = bias.shape[0] // 4
        bias[hidden:2 * hidden] += 1
        return bias


class RecurrentGradSkipsFirstStep(FusedLSTM):
    """dW_hh summed over steps 1..T-1 only: the first step's h_0 term is lost."""

    name = "mutant_dwhh_first_step"
    description = "recurrent-weight gradient leaves out the first step"

    def _weight_grads(self, d_gates, x, h_prev):
        d_w_x, _ = super()._weight_grads(d_gates, x, h_prev)
        batch = self.layers[0].shape[1]  # rows 0..B-1 are step 0
        return d_w_x, d_gates[batch:].t() @ h_prev[batch:]


class NaNOutput(FusedLSTM):
    """A NaN in one output element: must fail whatever the tolerance."""

    name = "mutant_nan"
    description = "one NaN in y"

    def forward(self, x, h0, c0):
        out = super().forward(x, h0, c0)
        y = out.y.clone()
        y[0, 0, 0] = float("nan")
        return Outputs(y, out.h_n, out.c_n)


MUTANTS = [RowZeroRecurrence, WrongGateOrder, ForgetBiasOffByOne, RecurrentGradSkipsFirstStep, NaNOutput]


class Crashes(FusedLSTM):
    """Raises inside forward, as a broken kernel would."""

    name = "broken_crash"
    description = "raises in forward"

    def forward(self, x, h0, c0):
        raise RuntimeError("planted kernel failure")


class RunsOutOfMemory(FusedLSTM):
    """Runs out of memory in backward on the larger problems only."""

    name = "broken_oom"
    description = "out of memory at batch 5"

    def backward(self, dy, dh_n, dc_n):
        if dy.shape[1] >= 5:
            raise torch.OutOfMemoryError("planted: tried to allocate 1 TiB")
        return super().backward(dy, dh_n, dc_n)


class ThreadsWhileTimed(FusedLSTM):
    """Right through every check before timing, then changes torch's thread count from its third forward on:
    inside the timed rounds, where (interleaved) the implementations after it would run under its change."""

    name = "mutant_threads_while_timed"
    description = "sets torch's thread count during the timed rounds"

    def forward(self, x, h0, c0):
        if _next_call(self) >= 3:
            torch.set_num_threads(1 if torch.get_num_threads() > 1 else 2)
        return super().forward(x, h0, c0)


BROKEN = [Crashes, RunsOutOfMemory, ThreadsWhileTimed]


# -- Wrong in ways one forward + backward on one input set cannot see --------------------------
# Each is `fused` with one planted bug of a class an adversarial plugin author would reach for;
# without the checks around timing each of them was timed (and looked fast or correct).


def _clone_grads(grads: Grads) -> Grads:
    return Grads(grads.dx.clone(), grads.dh0.clone(), grads.dc0.clone(),
                 [w.map(torch.clone) for w in grads.weights])


class StaleAccumulator(FusedLSTM):
    """Weight gradients summed into accumulators that are never re-zeroed: call 2 onwards is wrong."""

    name = "mutant_stale_grads"
    description = "weight-gradient accumulators never re-zeroed between calls"

    def backward(self, dy, dh_n, dc_n, gate_clip=None):
        grads = super().backward(dy, dh_n, dc_n, gate_clip)
        if not hasattr(self, "_acc"):
            self._acc = [w.map(torch.zeros_like) for w in grads.weights]
        for acc, new in zip(self._acc, grads.weights, strict=True):
            for a, n in zip(acc.tensors(), new.tensors(), strict=True):
                a.add_(n)
        return Grads(grads.dx, grads.dh0, grads.dc0, [w.map(torch.clone) for w in self._acc])


class MemoisedPerInstance(FusedLSTM):
    """The first call's outputs and gradients returned for every later call, whatever the input."""

    name = "mutant_memo"
    description = "outputs and gradients cached per instance, returned whatever the input"

    def forward(self, x, h0, c0):
        if not hasattr(self, "_out"):
            out = super().forward(x, h0, c0)
            self._out = Outputs(out.y.clone(), out.h_n.clone(), out.c_n.clone())
        return self._out

    def backward(self, dy, dh_n, dc_n, gate_clip=None):
        if not hasattr(self, "_grads"):
            self._grads = _clone_grads(super().backward(dy, dh_n, dc_n, gate_clip))
        return self._grads


class MemoisedPerClass(FusedLSTM):
    """Results cached on the class: every instance, on any input, gets the first one's."""

    name = "mutant_class_memo"
    description = "outputs and gradients cached per class"
    _cache: dict = {}

    def forward(self, x, h0, c0):
        key = (type(self), tuple(x.shape))
        if key not in self._cache:
            out = super().forward(x, h0, c0)
            self._cache[key] = Outputs(out.y.clone(), out.h_n.clone(), out.c_n.clone())
        return self._cache[key]

    def backward(self, dy, dh_n, dc_n, gate_clip=None):
        key = (type(self), "grads", tuple(dy.shape))
        if key not in self._cache:
            self._cache[key] = _clone_grads(super().backward(dy, dh_n, dc_n, gate_clip))
        return self._cache[key]


class LazyForward(FusedLSTM):
    """forward returns output buffers that only backward fills in."""

    name = "mutant_lazy_forward"
    description = "forward's outputs are filled in by backward"

    def forward(self, x, h0, c0):
        self._real = super().forward(x, h0, c0)
        self._lazy = Outputs(torch.zeros_like(self._real.y), torch.zeros_like(self._real.h_n),
                             torch.zeros_like(self._real.c_n))
        return self._lazy

    def backward(self, dy, dh_n, dc_n, gate_clip=None):
        for lazy, real in zip((self._lazy.y, self._lazy.h_n, self._lazy.c_n),
                              (self._real.y, self._real.h_n, self._real.c_n), strict=True):
            lazy.copy_(real)
        return super().backward(dy, dh_n, dc_n, gate_clip)


class BackwardInForward(FusedLSTM):
    """From the second forward on, the backward runs inside forward with the upstream gradient
    remembered from the first backward: backward then looks almost free (only correct while dy
    never changes)."""

    name = "mutant_backward_in_forward"
    description = "backward's work done in forward with a remembered dy"

    def forward(self, x, h0, c0):
        out = super().forward(x, h0, c0)
        if hasattr(self, "_dy"):
            self._ready = _clone_grads(super().backward(*self._dy))
        return out

    def backward(self, dy, dh_n, dc_n, gate_clip=None):
        if getattr(self, "_ready", None) is not None:
            ready, self._ready = self._ready, None
            return ready
        self._dy = (dy.clone(), dh_n.clone(), dc_n.clone())
        return super().backward(dy, dh_n, dc_n, gate_clip)


class NaNFromSecondCall(FusedLSTM):
    """Correct on the first call of an instance, NaN in y from the second on."""

    name = "mutant_nan_later"
    description = "correct once, NaN from the second call"

    def forward(self, x, h0, c0):
        out = super().forward(x, h0, c0)
        if _next_call(self) > 1:
            out.y[-1, 0, 0] = float("nan")
        return out


class WritesIntoX(FusedLSTM):
    """Uses the caller's x as scratch space after its input projection."""

    name = "mutant_writes_x"
    description = "writes into its input x"

    def forward(self, x, h0, c0):
        out = super().forward(x, h0, c0)
        x.mul_(0.5)
        return out


class NaiveTanh(FusedLSTM):
    """tanh as (e^2z - 1) / (e^2z + 1): exact for small arguments, NaN once e^2z overflows."""

    name = "mutant_naive_tanh"
    description = "tanh written with a naive exp"

    @staticmethod
    def _tanh(z, out):
        e = torch.exp(2 * z)
        return torch.div(e - 1, e + 1, out=out)


class Float64Results(FusedLSTM):
    """Computes in float64 and returns float64 where float32 was asked (credited 4e-16 if cast)."""

    name = "mutant_float64"
    description = "returns float64 tensors for a float32 problem"

    def __init__(self, problem, weights):
        super().__init__(problem.replace(dtype="float64"), [w.map(torch.Tensor.double) for w in weights])

    def forward(self, x, h0, c0):
        return super().forward(x.double(), h0.double(), c0.double())

    def backward(self, dy, dh_n, dc_n, gate_clip=None):
        return super().backward(dy.double(), dh_n.double(), dc_n.double(), gate_clip)


class NumpyOutput(FusedLSTM):
    """Returns y as a NumPy array."""

    name = "mutant_numpy"
    description = "returns y as a NumPy array"

    def forward(self, x, h0, c0):
        out = super().forward(x, h0, c0)
        return Outputs(out.y.numpy(), out.h_n, out.c_n)


class OneThread(FusedLSTM):
    """Changes torch's thread count (as some libraries do on import or first use)."""

    name = "mutant_one_thread"
    description = "sets torch's thread count to 1"

    def forward(self, x, h0, c0):
        torch.set_num_threads(1 if torch.get_num_threads() > 1 else 2)  # a change on any machine
        return super().forward(x, h0, c0)


class MemoisedByAddress(FusedLSTM):
    """Results cached by the address of x and dy: right for as long as callers pass new tensors."""

    name = "mutant_address_memo"
    description = "outputs and gradients cached by the inputs' data pointers"

    def forward(self, x, h0, c0):
        cache = self.__dict__.setdefault("_outputs_by_address", {})
        if x.data_ptr() not in cache:
            out = super().forward(x, h0, c0)
            cache[x.data_ptr()] = Outputs(out.y.clone(), out.h_n.clone(), out.c_n.clone())
        return cache[x.data_ptr()]

    def backward(self, dy, dh_n, dc_n, gate_clip=None):
        cache = self.__dict__.setdefault("_grads_by_address", {})
        if dy.data_ptr() not in cache:
            cache[dy.data_ptr()] = _clone_grads(super().backward(dy, dh_n, dc_n, gate_clip))
        return cache[dy.data_ptr()]


class LateOutputs(FusedLSTM):
    """Returns an Outputs subclass that does the work when its tensors are read."""

    name = "mutant_late_outputs"
    description = "forward's result computes when it is read"

    def forward(self, x, h0, c0):
        impl = self

        class Late(Outputs):
            def named(self):
                real = FusedLSTM.forward(impl, x, h0, c0)
                return real.named()

        return Late(x[..., :1], h0, c0)


class SkipsMidTiming(FusedLSTM):
    """Calls pytest.skip from its fourth forward on, in the middle of the timed rounds."""

    name = "mutant_skips"
    description = "raises pytest's Skipped from inside a timed round"

    def forward(self, x, h0, c0):
        if _next_call(self) >= 4:
            import pytest

            pytest.skip("planted skip from inside a timed round")
        return super().forward(x, h0, c0)


# name -> what the harness must say about it (one of several)
TRUST_MUTANTS = {
    StaleAccumulator: "zero initial state",  # its second backward, on the same instance
    MemoisedPerInstance: ("on its own inputs", "zero initial state"),  # wrong from its second call
    MemoisedPerClass: ("saturating input set", "zero initial state"),
    LazyForward: "input set 0",
    BackwardInForward: "on its own inputs",
    NaNFromSecondCall: ("on its own inputs", "zero initial state"),
    WritesIntoX: "modified its input x in place",
    NaiveTanh: "saturating input set",
    Float64Results: "dtype torch.float64, expected torch.float32",
    NumpyOutput: "numpy.ndarray, not a torch.Tensor",
    OneThread: "changed process-wide state: torch.get_num_threads()",
    MemoisedByAddress: "on its own inputs",
    LateOutputs: "not harness.Outputs",
    SkipsMidTiming: "planted skip",
}


# -- What the timed calls must not get away with (fresh inputs, upstream gradients after forward,
# calls checked at random, the zero state, a wider type) ------------------------------------------
# Each was timed before the harness gave every call inputs of its own and checked calls at random.


def _key(*tensors) -> tuple:
    return tuple((t.shape, t.detach().cpu().numpy().tobytes()) for t in tensors)


class ContentCache(FusedLSTM):
    """Correct, but caches results by the inputs' values: whenever a call repeats values an earlier call had,
    it returns the stored result at no cost. Each hit is written to $LSTM_MUTANT_HITS (when set)."""

    name = "mutant_content_cache"
    description = "results cached by the values of the inputs"

    def _hit(self, what: str) -> None:
        import os

        path = os.environ.get("LSTM_MUTANT_HITS")
        if path:
            with open(path, "a") as log:
                log.write(f"{what}\n")

    def forward(self, x, h0, c0):
        cache = self.__dict__.setdefault("_outputs", {})
        self._forward_key = _key(x, h0, c0)
        if self._forward_key in cache:
            self._hit("forward")
            out = cache[self._forward_key][0]
            super().forward(x, h0, c0)  # backward still needs this forward's state
            return out
        out = super().forward(x, h0, c0)
        cache[self._forward_key] = (Outputs(out.y.clone(), out.h_n.clone(), out.c_n.clone()),)
        return out

    def backward(self, dy, dh_n, dc_n, gate_clip=None):
        cache = self.__dict__.setdefault("_grads", {})
        key = (self._forward_key, _key(dy, dh_n, dc_n))
        if key in cache:
            self._hit("backward")
            return cache[key]
        cache[key] = _clone_grads(super().backward(dy, dh_n, dc_n, gate_clip))
        return cache[key]


class BackwardFromOldBuffer(FusedLSTM):
    """Keeps the upstream-gradient tensors it was handed and, from then on, does backward's work inside forward
    with whatever they hold: right only when the caller wrote the next gradients into the same tensors before
    calling forward, which never happens in training."""

    name = "mutant_backward_from_buffer"
    description = "backward done in forward on the upstream-gradient tensors of the last call"

    def forward(self, x, h0, c0):
        out = super().forward(x, h0, c0)
        held = getattr(self, "_upstream", None)
        self._ready = _clone_grads(super().backward(*held)) if held is not None else None
        return out

    def backward(self, dy, dh_n, dc_n, gate_clip=None):
        self._upstream = (dy, dh_n, dc_n)  # the tensors themselves, not their values
        ready, self._ready = getattr(self, "_ready", None), None
        return ready if ready is not None else super().backward(dy, dh_n, dc_n, gate_clip)


class WrongEveryFifthCall(FusedLSTM):
    """Right on four calls, wrong on the fifth (stale state every fifth call): forward's y off on every fifth."""

    name = "mutant_every_fifth"
    description = "wrong y on every fifth forward"

    def forward(self, x, h0, c0):
        out = super().forward(x, h0, c0)
        if _next_call(self) % 5 == 0:
            out.y[-1] += 0.5
        return out


class WrongOnARandomFifth(FusedLSTM):
    """Wrong on a random fifth of the calls, as a race or an uninitialised buffer is."""

    name = "mutant_random_fifth"
    description = "wrong y on a random fifth of the forwards"

    def forward(self, x, h0, c0):
        import random

        out = super().forward(x, h0, c0)
        if random.random() < 0.2:
            out.y[0] += 0.5
        return out


class WrongAtZeroState(FusedLSTM):
    """A 'no state given' fast path that starts from the wrong state: right whenever h0 or c0 is nonzero."""

    name = "mutant_zero_state"
    description = "wrong when h0 = c0 = 0"

    def forward(self, x, h0, c0):
        if not bool(h0.any()) and not bool(c0.any()):
            h0 = torch.full_like(h0, 0.1)
        return super().forward(x, h0, c0)


class ComputesInFloat64(FusedLSTM):
    """Right, but computes its float32 problem in float64 and rounds the results: its times are not float32's."""

    name = "mutant_wide"
    description = "computes in float64, returns float32"

    def __init__(self, problem, weights):
        super().__init__(problem.replace(dtype="float64"), [w.map(torch.Tensor.double) for w in weights])
        self.problem_asked = problem

    def forward(self, x, h0, c0):
        out = super().forward(x.double(), h0.double(), c0.double())
        return Outputs(out.y.float(), out.h_n.float(), out.c_n.float())

    def backward(self, dy, dh_n, dc_n, gate_clip=None):
        g = super().backward(dy.double(), dh_n.double(), dc_n.double(), gate_clip)
        return Grads(g.dx.float(), g.dh0.float(), g.dc0.float(), [w.map(torch.Tensor.float) for w in g.weights])


# name -> what the harness must say about it (None: right, so timed; the test checks what it must show)
HONESTY_MUTANTS = {
    ContentCache: None,
    BackwardFromOldBuffer: "timed backward call",
    WrongEveryFifthCall: "timed forward call",
    WrongOnARandomFifth: "forward",
    WrongAtZeroState: "zero initial state",
    ComputesInFloat64: None,
}
