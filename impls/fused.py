"""`fused`: the Caffe LSTM's fast design in PyTorch with a hand-written backward.

Gates are reordered to o, i, f, g: the three sigmoid gates are one contiguous block (one
activation call), and so are the three gates whose gradient is dc times something (one
broadcast multiply in backward). The input projection of all T steps (both biases folded in)
is ONE GEMM; each step does one recurrent GEMM and the gate math. Backward walks time in
reverse with one GEMM per step for dh, then computes the recurrent-weight gradient as ONE GEMM
over all steps (h_0 included: hidden states live in a [T+1, B, H] buffer whose row 0 is h_0),
the input-weight gradient, the bias gradient and dx as one operation each. No autograd graph.

How it runs on a CPU (the per-step product: the C++ loop's own register-blocked kernel, MKL's packed
GEMM, oneDNN's prepacked one or ATen's; the threads of a call; the big GEMMs on oneDNN or ATen) is
chosen by measuring at construction, once per machine and shape (impls/fused_tuning.py); elsewhere,
and with LSTM_HARNESS_NO_TUNING=1, a fixed rule (default_plan).

The per-layer time loop runs in C++ (impls/native: one GEMM and one pointwise pass per step, no
Python between steps) wherever the extension builds; otherwise, and in `fused_python`, it runs
here in Python, where everything that does not depend on the recurrence (activation derivatives,
products with the saved gates) is computed for all steps at once, leaving five small operations
per step. The backend label says which loop ran.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from harness.contract.impl import Grads, Impl, Outputs
from harness.contract.inputs import LayerWeights, make_inputs
from harness.contract.layout import gate_rows
from harness.contract.problem import Problem
from harness.contract.registry import register
from impls import fused_tuning
from impls.fused_tuning import GEMM_ATEN, GEMM_LOOP, GEMM_LOOP_BATCH, GEMM_MKL, GEMM_PACKED, Plan
from impls.native import native_steps

# A prepacked oneDNN call costs ~20 us however small; it pays from about this width on
# (measured at batch 4: H=128 addmm 19 us vs 31 us prepacked, H=512 233 us vs 67 us).
PACKED_MIN_HIDDEN = 256
# Below this many multiply-adds a step (B * 4H * H), the C++ loop does the recurrent product itself:
# a library call's fixed cost (a few us) is more than the arithmetic (batch 1, hidden 15: 900).
LOOP_GEMM_MAX_MACS = 1 << 18
# The GEMM modes (GEMM_*, defined in impls/fused_tuning.py) that run the C++ loop's own kernel, which reads the
# weights packed by own_pack: GEMM_LOOP splits each step's product by columns, GEMM_LOOP_BATCH the batch for the
# whole loop (no barrier per step).
OWN_KERNEL = (GEMM_LOOP, GEMM_LOOP_BATCH)


def onednn_prepacking(problem: Problem) -> bool:
    """Whether this torch can prepack a weight for oneDNN on the problem's device and dtype."""
    return (problem.device == "cpu" and problem.dtype == "float32" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def packed_gemm_available(problem: Problem) -> bool:
    """The fixed rule's choice of oneDNN-prepacked GEMMs (tuning measures them at any width)."""
    return onednn_prepacking(problem) and problem.hidden >= PACKED_MIN_HIDDEN


@functools.cache
def dnn_matmul_works() -> bool:
    """Whether the C++ loop's dnn_matmul (oneDNN's matmul, which PyTorch exports but does not document)
    runs float32 here and agrees with torch.mm: a PyTorch that lacks it, or keeps it to half precision,
    leaves the weight gradients on ATen. Its operands are made explicitly (the process's default dtype,
    device and random state are not this check's to use)."""
    ops = native_steps().ops
    if ops is None or not torch.backends.mkldnn.is_available() or not ops.has_dnn_matmul():
        return False
    made = {"dtype": torch.float32, "device": "cpu"}
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(24, n, generator=generator, **made) for n in (40, 16))
    out = torch.empty(40, 16, **made)
    try:
        ops.dnn_matmul(a.t(), b, out, 0.0)
    except RuntimeError:
        return False
    return torch.allclose(out, a.t() @ b, rtol=1e-5, atol=1e-5)


@contextlib.contextmanager
def call_threads(threads: int):
    """The call runs on `threads` threads (0: the process's); the process's count is put back."""
    before = torch.get_num_threads()
    if threads == 0 or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Gemm:
    """x @ w^T (+ bias) (+ addend) for a fixed weight w [out, in]: oneDNN-prepacked when
    `packed` (the result is then a new tensor), else torch.addmm / torch.mm into `out`."""

    def __init__(self, w: torch.Tensor, batch: int, packed: bool, bias: torch.Tensor | None = None) -> None:
        self.w, self.bias, self.batch = w, bias, batch
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, batch) if packed else None

    def refresh(self) -> None:
        """Re-pack `w` after it changed in place, into the same packed tensor (addmm reads `w` itself)."""
        if self.packed is not None:
            self.packed.copy_(torch.ops.mkldnn._reorder_linear_weight(self.w, self.batch))

    def __call__(self, x: torch.Tensor, addend: torch.Tensor | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        if self.packed is None:
            base = addend if addend is not None else self.bias
            if base is None:
                return torch.mm(x, self.w.t(), out=out)
            return torch.addmm(base, x, self.w.t(), out=out)
        if addend is None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(x, addend, self.packed, self.bias, "add")


class MklPacked:
    """A weight packed for MKL's packed GEMM (cblas_sgemm_pack) by the C++ loop, as the B operand
    of [batch, k] @ B with B = w^T (`transposed`) or w: the per-step products of the C++ loop."""

    def __init__(self, ops, w: torch.Tensor, batch: int, transposed: bool) -> None:
        self.ops, self.w, self.batch, self.transposed = ops, w, batch, transposed
        self.packed = ops.mkl_pack(w, batch, transposed, None)

    def refresh(self) -> None:
        self.ops.mkl_pack(self.w, self.batch, self.transposed, self.packed)


class OwnPacked:
    """A weight [K, N] packed into the C++ loop's own column-block layout (own_pack): the per-step
    products of its own kernel read it in order."""

    def __init__(self, ops, w: torch.Tensor) -> None:
        self.ops, self.w = ops, w
        self.packed = ops.own_pack(w, None)

    def refresh(self) -> None:
        self.ops.own_pack(self.w, self.packed)


class _Layer:
    """One layer's weights (forward: fused gate order; backward: canonical, transposed), its
    per-step GEMMs and activation buffers. Every weight tensor is the layer's own, so set_weights
    can write into it."""

    def __init__(self, w_x, w_h, bias, canonical: LayerWeights):
        self.w_x, self.w_h, self.bias = w_x, w_h, bias  # [4H, I], [4H, H], [4H], gates o, i, f, g
        # Backward writes dA in canonical order, so dW, db and dx come out canonical with no
        # permutation copies: it needs the canonical weights, as dA @ W. A clone, not
        # .contiguous(), which can return the caller's own tensor (W_ih of width 1, say).
        self.w_x_t, self.w_h_t = (w.t().clone(memory_format=torch.contiguous_format)
                                  for w in (canonical.w_ih, canonical.w_hh))  # [I, 4H], [H, 4H]
        # What the C++ loop's own kernel packs (OwnPacked): W_h^T [H, 4H] (fused order) forward, W_hh [4H, H] backward.
        self.w_h_rows = w_h.t().clone(memory_format=torch.contiguous_format)
        self.w_hh = canonical.w_hh.clone(memory_format=torch.contiguous_format)
        self.forward_gemm = self.backward_gemm = self.input_gemm = self.dx_gemm = None
        self.step_weights = None
        self.shape = None

    def load(self, w_x, w_h, bias, canonical: LayerWeights) -> None:
        """New weights, in place: captured graphs and prepacked GEMMs keep reading the same tensors."""
        pairs = ((self.w_x, w_x), (self.w_h, w_h), (self.bias, bias),
                 (self.w_x_t, canonical.w_ih.t()), (self.w_h_t, canonical.w_hh.t()),
                 (self.w_h_rows, w_h.t()), (self.w_hh, canonical.w_hh))
        for mine, new in pairs:
            if mine.shape != new.shape:  # copy_ would broadcast a wrong shape silently
                raise ValueError(f"set_weights: a weight of shape {tuple(new.shape)}, expected {tuple(mine.shape)}")
            mine.copy_(new)
        for gemm in (self.forward_gemm, self.backward_gemm, self.input_gemm, self.dx_gemm, *(self.step_weights or ())):
            if gemm is not None:
                gemm.refresh()

    def buffers(self, T: int, B: int, H: int, like: torch.Tensor, plan: Plan, ops) -> None:
        if self.shape == (T, B):
            return
        new = lambda *s: torch.empty(*s, dtype=like.dtype, device=like.device)  # noqa: E731
        self.gates = new(T, B, 4 * H)  # input projection, then (after step t) activated gates o, i, f, g
        self.h = new(T + 1, B, H)  # h[0] = h_0, h[t+1] = h_t
        self.c = new(T + 1, B, H)  # c[0] = c_0, c[t+1] = c_t
        self.tanh_c = new(T, B, H)
        self.d_gates = new(T, B, 4 * H)  # dA in canonical order i, f, g, o
        self.pre = new(B, 4 * H)  # scratch for one step's pre-activation
        # Prepacking is tuned to the row count of the product.
        if self.shape is None or self.shape[1] != B:
            # The per-step products: oneDNN-prepacked in GEMM_PACKED mode, MKL-packed in GEMM_MKL.
            step_packed = plan.step == GEMM_PACKED
            self.forward_gemm = Gemm(self.w_h, B, step_packed)  # h_{t-1} @ W_h^T
            self.backward_gemm = Gemm(self.w_h_t, B, step_packed)  # dA_t @ W_h
            # The step's packed weights, forward then backward: MKL's, or the loop kernel's own layout.
            self.step_weights = ((MklPacked(ops, self.w_h, B, True), MklPacked(ops, self.w_hh, B, False))
                        if plan.step == GEMM_MKL else
                        (OwnPacked(ops, self.w_h_rows), OwnPacked(ops, self.w_hh))
                        if plan.step in OWN_KERNEL and ops is not None else None)
        self.input_gemm = Gemm(self.w_x, T * B, plan.big_packed, bias=self.bias)  # X @ W_x^T + b, all steps
        self.dx_gemm = Gemm(self.w_x_t, T * B, plan.big_packed)  # dA @ W_x, all steps
        self.shape = (T, B)


@register
class FusedLSTM(Impl):
    name = "fused"
    description = ("the Caffe LSTM's fused design: one input GEMM for all steps, one GEMM for the "
                   "recurrent-weight gradient, hand-written backward")
    gate_clipping = True
    use_packed_gemm = True  # tests turn it off to cover the torch.addmm path everywhere
    use_native_loop = True  # False: the time loop in Python (fused_python)
    use_mkl_gemm = True  # the C++ loop's per-step products on MKL's packed GEMM where torch has MKL
    fixed_plan: Plan | None = None  # set: every instance runs this plan (tests pin each path with it)

    @classmethod
    def native_loop(cls):
        """The C++ loop's ops, or None where the Python loop runs. A subclass that overrides a part
        of the Python loop gets the Python loop, or its override would be silently ignored."""
        if not cls.use_native_loop or cls.overrides_a_loop_seam():
            return None
        return native_steps().ops

    @classmethod
    def overrides_a_loop_seam(cls) -> bool:
        seams = ("_recurrent_product", "_tanh", "_forward_steps", "_backward_steps")
        return any(getattr(cls, s) is not getattr(FusedLSTM, s) for s in seams)

    @classmethod
    def gemm_mode(cls, problem: Problem, native: bool) -> int:
        """The fixed rule's per-step product: the C++ loop's own (tiny sizes), MKL's packed GEMM (the
        C++ loop, float32 on the CPU), the oneDNN-prepacked one, or ATen's."""
        cpu = problem.device == "cpu"
        if native and cpu and problem.dtype in ("float32", "float64") \
                and problem.batch * 4 * problem.hidden ** 2 <= LOOP_GEMM_MAX_MACS:
            return GEMM_LOOP
        if native and cpu and problem.dtype == "float32" and cls.use_mkl_gemm and cls.use_packed_gemm \
                and native_steps().ops.has_mkl_packed_gemm():
            return GEMM_MKL
        if cls.use_packed_gemm and packed_gemm_available(problem):
            return GEMM_PACKED
        return GEMM_ATEN

    @classmethod
    def default_plan(cls, problem: Problem, native: bool) -> Plan:
        """The fixed rule (no measuring): what runs off the CPU, in the Python loop, and untuned."""
        return Plan(cls.gemm_mode(problem, native), 0, cls.use_packed_gemm and packed_gemm_available(problem))

    @classmethod
    def candidates(cls, problem: Problem, native: bool) -> list[Plan]:
        """Every way the C++ loop can run `problem` here (tuning measures them all); [] where there is
        nothing to choose (off the CPU, no C++ loop, a dtype without the hand-written pass)."""
        if not (native and problem.device == "cpu" and problem.dtype in ("float32", "float64")
                and fused_tuning.tuning_enabled()):
            return []
        steps = [GEMM_LOOP, GEMM_ATEN]
        prepacking = cls.use_packed_gemm and onednn_prepacking(problem)
        if prepacking:
            steps.append(GEMM_PACKED)
            if cls.use_mkl_gemm and native_steps().ops.has_mkl_packed_gemm():
                steps.append(GEMM_MKL)
        threads = sorted({1, torch.get_num_threads()})
        big = [False, True] if prepacking else [False]
        plans = [Plan(step, n, packed) for step in steps for n in threads for packed in big]
        # The batch split differs from GEMM_LOOP only with more than one thread and more than one row.
        batch_split = problem.batch > 1
        return plans + [Plan(GEMM_LOOP_BATCH, n, packed) for n in threads if n > 1 and batch_split for packed in big]

    @classmethod
    def plan_for(cls, problem: Problem) -> tuple[Plan, fused_tuning.Tuned | None]:
        """The plan an instance on `problem` runs without measuring: the fixed one, or the tuned one this
        process or the cache knows (None: it would be measured at construction)."""
        native = cls.native_loop() is not None
        if cls.fixed_plan is not None or not cls.candidates(problem, native):
            return cls.fixed_plan or cls.default_plan(problem, native), None
        tuned = fused_tuning.lookup(problem, cls.candidates(problem, native))
        return (tuned.plan if tuned else None), tuned

    @classmethod
    def backend(cls, problem: Problem) -> str:
        native = cls.native_loop() is not None
        if native:
            loop = "C++ time loop"
        elif cls.use_native_loop and cls.overrides_a_loop_seam():
            loop = "Python time loop (a subclass overrides a part of it)"
        elif cls.use_native_loop:
            loop = f"Python time loop (C++ loop {native_steps().describe()})"  # not built: the reason
        else:
            loop = "Python time loop"
        plan, tuned = cls.plan_for(problem)
        if plan is None:
            how = "chosen by measuring at construction"
        elif tuned is not None:
            # Not whether it came from the cache: one path must give one label, or a report splits its rows.
            how = f"{plan.label()} (chosen by measuring here)"
            if plan.big_packed and native and not dnn_matmul_works():
                how += "; dW on ATen (this PyTorch's oneDNN matmul does not run float32)"
        else:
            how = {GEMM_PACKED: "oneDNN-prepacked per-step GEMMs", GEMM_LOOP: "per-step products in the C++ loop",
                   GEMM_LOOP_BATCH: "per-step products in the C++ loop, the batch split between threads",
                   GEMM_MKL: "MKL-packed per-step GEMMs", GEMM_ATEN: "torch.addmm GEMMs"}[plan.step]
        return f"PyTorch {torch.__version__} ops, {loop}, {how} ({problem.device})"

    def __init__(self, problem: Problem, weights: list[LayerWeights], plan: Plan | None = None) -> None:
        super().__init__(problem, weights)
        self.native = self.native_loop()  # built (first use) or loaded here, outside any timed call
        self.plan = plan or self.fixed_plan or self._chosen_plan(problem, weights)
        # dW on oneDNN's matmul: the plan puts the big GEMMs on oneDNN and the matmul works here (decided now,
        # outside any timed call: the first answer runs a check).
        self.dnn_weight_grads = (self.plan.big_packed and self.native is not None and onednn_prepacking(problem)
                                 and dnn_matmul_works())
        self.layers = [_Layer(*fused, w) for fused, w in zip(self._fused_order(weights), weights, strict=True)]

    def _chosen_plan(self, problem: Problem, weights: list[LayerWeights]) -> Plan:
        candidates = self.candidates(problem, self.native is not None)
        if not candidates:
            return self.default_plan(problem, self.native is not None)
        short = problem.replace(length=min(problem.length, fused_tuning.TUNING_STEPS))
        inputs = make_inputs(short, seed=0)

        def run_for(plan: Plan):
            # FusedLSTM itself, not a subclass: what is measured is the path, and a subclass may
            # construct differently.
            impl = FusedLSTM(short, weights, plan=plan)

            def run():
                impl.forward(inputs.x, inputs.h0, inputs.c0)
                impl.backward(inputs.dy, inputs.dh_n, inputs.dc_n)
            return run

        one_layer = problem.replace(layers=1, length=min(problem.length, fused_tuning.SPLIT_STEPS))

        def loop_for(plan: Plan):
            """The first layer's time loop alone, forward and backward, on buffers a forward filled."""
            loop_inputs = make_inputs(one_layer, seed=0)
            impl = FusedLSTM(one_layer, weights[:1], plan=plan)
            impl.forward(loop_inputs.x, loop_inputs.h0, loop_inputs.c0)
            layer, H = impl.layers[0], problem.hidden
            T, d_out = one_layer.length, loop_inputs.dy
            dh_n, dc_n = loop_inputs.dh_n[0], loop_inputs.dc_n[0]

            def run():
                with call_threads(plan.threads):
                    impl._forward_steps(layer, T, H)
                    impl._backward_steps(layer, dh_n + d_out[T - 1], dc_n.clone(), d_out, None)
            return run
        return fused_tuning.tune(problem, candidates, run_for, loop_for=loop_for).plan

    def _fused_order(self, weights: list[LayerWeights]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per layer W_x, W_h and the combined bias in gate order o, i, f, g: new tensors."""
        perm = self._gate_permutation(self.problem.hidden).to(self.problem.device)
        return [(w.w_ih[perm].contiguous(), w.w_hh[perm].contiguous(), self._combined_bias(w)[perm].contiguous())
                for w in weights]

    @torch.no_grad()
    def set_weights(self, weights: list[LayerWeights]) -> None:
        """Write the new weights into every tensor forward and backward read, in place: graphs
        captured from them (fused_graphs) see the new values, and buffers are kept."""
        if len(weights) != len(self.layers):
            raise ValueError(f"set_weights: {len(weights)} layer(s) of weights, expected {len(self.layers)}")
        for layer, fused, w in zip(self.layers, self._fused_order(weights), weights, strict=True):
            layer.load(*fused, w)

    # Small seams: each is one step of the algorithm, named so tests can plant a bug in it.
    @staticmethod
    def _gate_permutation(hidden: int) -> torch.Tensor:
        return gate_rows(hidden, "oifg")

    @staticmethod
    def _combined_bias(w: LayerWeights) -> torch.Tensor:
        return w.b_ih + w.b_hh

    # The tanh of gate g and of the cell state: a seam, so tests can plant a naive formula.
    _tanh = staticmethod(torch.tanh)

    @staticmethod
    def _recurrent_product(layer: _Layer, h_prev: torch.Tensor, x_proj: torch.Tensor) -> torch.Tensor:
        """This step's pre-activations: x_proj + h_prev @ W_h^T."""
        return layer.forward_gemm(h_prev, x_proj, out=layer.pre)

    def _weight_grads(self, d_gates: torch.Tensor, x: torch.Tensor, h_prev: torch.Tensor):
        """dW_x = d_gates [T*B, 4H]^T @ x [T*B, I] and dW_h = d_gates^T @ h_prev [T*B, H], each ONE GEMM over
        all steps (the recurrent one is the Caffe LSTM's single matrix product). With the big GEMMs on
        oneDNN, its matmul reads the transposed view of d_gates as it is (MKL runs a transposed A at 0.9x the
        rate of a plain one, and oneDNN's linear wants it copied); on ATen, one product over [x | h_prev],
        faster than two there."""
        if self.dnn_weight_grads:
            d_w_x = d_gates.new_empty(d_gates.shape[1], x.shape[1])
            d_w_h = d_gates.new_empty(d_gates.shape[1], h_prev.shape[1])
            self.native.dnn_matmul(d_gates.t(), x, d_w_x, 0.0)
            self.native.dnn_matmul(d_gates.t(), h_prev, d_w_h, 0.0)
            return d_w_x, d_w_h
        d_w = d_gates.t() @ torch.cat([x, h_prev], dim=1)
        return d_w[:, :x.shape[1]], d_w[:, x.shape[1]:]

    def saved_bytes(self) -> int:
        """Activations kept for backward: gates, hidden and cell states, tanh(c), per layer."""
        return sum(t.nbytes for layer in self.layers for t in (layer.gates, layer.h, layer.c, layer.tanh_c))

    @torch.no_grad()
    def forward(self, x, h0, c0) -> Outputs:
        with call_threads(self.plan.threads):
            return self._forward(x, h0, c0)

    def _forward(self, x, h0, c0) -> Outputs:
        T, B, H = x.shape[0], x.shape[1], self.problem.hidden
        self.x = x
        layer_input = x
        for l, layer in enumerate(self.layers):
            layer.buffers(T, B, H, x, self.plan, self.native)
            # All T input projections and both biases in one GEMM.
            layer.gates = layer.input_gemm(layer_input.reshape(T * B, -1),
                                           out=layer.gates.view(T * B, 4 * H)).view(T, B, 4 * H)
            layer.h[0].copy_(h0[l])
            layer.c[0].copy_(c0[l])
            self._forward_steps(layer, T, H)
            layer_input = layer.h[1:]
        # y aliases the top layer's buffer: valid until the next forward, like any workspace.
        return Outputs(layer_input,
                       torch.stack([layer.h[T] for layer in self.layers]),
                       torch.stack([layer.c[T] for layer in self.layers]))

    def _forward_steps(self, layer: _Layer, T: int, H: int) -> None:
        """The recurrence of one layer: gates hold the input projections; fills gates (activated),
        h[1:], c[1:] and tanh_c."""
        if self.native is not None:
            packed = layer.step_weights[0].packed if layer.step_weights else layer.forward_gemm.packed
            self.native.forward_steps(layer.gates, layer.h, layer.c, layer.tanh_c, layer.w_h, packed, layer.pre,
                                      self.plan.step)
            return
        gates = layer.gates
        # Per-step views made in a few calls up front: at small batches the Python cost of
        # slicing inside the loop is a visible share of a step.
        hs, cs, tcs = layer.h.unbind(0), layer.c.unbind(0), layer.tanh_c.unbind(0)
        sig, g = gates[..., :3 * H].unbind(0), gates[..., 3 * H:].unbind(0)
        o, i, f = (gates[..., k * H:(k + 1) * H].unbind(0) for k in range(3))
        tanh = self._tanh
        for t in range(T):
            pre = self._recurrent_product(layer, hs[t], gates[t])
            torch.sigmoid(pre[:, :3 * H], out=sig[t])  # o, i, f
            tanh(pre[:, 3 * H:], out=g[t])
            torch.mul(f[t], cs[t], out=cs[t + 1])
            cs[t + 1].addcmul_(i[t], g[t])
            tanh(cs[t + 1], out=tcs[t])
            torch.mul(o[t], tcs[t], out=hs[t + 1])

    @torch.no_grad()
    def backward(self, dy, dh_n, dc_n, gate_clip=None) -> Grads:
        with call_threads(self.plan.threads):
            return self._backward(dy, dh_n, dc_n, gate_clip)

    def _backward(self, dy, dh_n, dc_n, gate_clip=None) -> Grads:
        T, B = self.layers[0].shape
        H = self.problem.hidden
        grads: list[LayerWeights] = [None] * len(self.layers)
        dh0, dc0 = torch.empty_like(dh_n), torch.empty_like(dc_n)
        d_out = dy
        for l in reversed(range(len(self.layers))):
            layer = self.layers[l]
            dh0[l], dc0[l] = self._backward_steps(layer, dh_n[l] + d_out[T - 1], dc_n[l].clone(), d_out, gate_clip)
            flat = layer.d_gates.view(T * B, 4 * H)
            layer_input = (self.x if l == 0 else self.layers[l - 1].h[1:]).reshape(T * B, -1)
            d_w_x, d_w_h = self._weight_grads(flat, layer_input, layer.h[:T].reshape(T * B, H))
            d_b = flat.sum(0)
            grads[l] = LayerWeights(d_w_x, d_w_h, d_b, d_b.clone())
            d_out = layer.dx_gemm(flat).view(T, B, -1)  # dx of this layer = dy of the one below
        return Grads(d_out, dh0, dc0, grads)

    def _backward_steps(self, layer: _Layer, dh: torch.Tensor, dc: torch.Tensor, d_out: torch.Tensor,
                        gate_clip: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The recurrence of one layer in reverse, from dh_T (dy_T included) and dc_T, fresh tensors
        that it may overwrite (the C++ loop and the Triton kernels do): fills d_gates
        (dA in canonical order i, f, g, o) and returns dh_0, dc_0. `d_out` is dy of this layer."""
        if self.native is not None:
            packed = layer.step_weights[1].packed if layer.step_weights else layer.backward_gemm.packed
            return self.native.backward_steps(layer.gates, layer.c, layer.tanh_c, layer.d_gates, dh, dc,
                                              d_out.contiguous(), layer.w_hh, packed, gate_clip, self.plan.step)
        T, B = layer.shape
        H = self.problem.hidden
        gates, d_gates, c, tanh_c = layer.gates, layer.d_gates, layer.c, layer.tanh_c
        o, i, f, g = (gates[..., k * H:(k + 1) * H] for k in range(4))
        # Everything that does not depend on the recurrence, for all T steps at once.
        # Activation derivatives (fused order): s(1 - s) for o, i, f and 1 - g^2 for g ...
        deriv = torch.mul(gates, gates)
        torch.sub(gates[..., :3 * H], deriv[..., :3 * H], out=deriv[..., :3 * H])
        deriv[..., 3 * H:].neg_().add_(1)
        # ... folded into what multiplies dh (for o) and dc (for i, f, g) in each step.
        dh_factor = tanh_c * deriv[..., :H]
        dc_factor = torch.stack([g * deriv[..., H:2 * H], c[:T] * deriv[..., 2 * H:3 * H],
                                 i * deriv[..., 3 * H:]], dim=2)  # [T, B, 3, H]
        dc_dh = (1 - tanh_c * tanh_c).mul_(o)  # dc_t/dh_t
        for t in reversed(range(T)):
            da = d_gates[t]  # canonical order: i, f, g, then o
            dc.addcmul_(dh, dc_dh[t])
            torch.mul(dc_factor[t], dc.unsqueeze(1), out=da[:, :3 * H].view(B, 3, H))  # i, f, g
            torch.mul(dh, dh_factor[t], out=da[:, 3 * H:])  # o
            if gate_clip is not None:
                da.clamp_(-gate_clip, gate_clip)
            dc.mul_(f[t])  # dc_{t-1}
            # dh_{t-1} = dA_t W_h (+ dy_{t-1}): the one GEMM per step.
            dh = layer.backward_gemm(da, d_out[t - 1] if t > 0 else None, out=dh)
        return dh, dc


@register
class FusedPythonLSTM(FusedLSTM):
    name = "fused_python"
    description = "`fused` with its per-step time loop in Python (no C++ extension): what the C++ loop saves"
    use_native_loop = False
