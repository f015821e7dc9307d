""""Kept for backward" counts what the autograd graph holds anywhere: tensors autograd saves and
tensors a custom torch.autograd.Function keeps as attributes of its ctx, each storage once, never
the inputs or the weights.

The LSTM below runs each step of each layer as one custom Function, which keeps for backward the
step's inputs (x_t, h_prev, c_prev), the weights, and two activations of its own (the four gate
activations and tanh of the new cell state): in one variant as ctx attributes, in another through
save_for_backward, in a third both ways."""

import pytest
import torch

from harness import AutogradImpl, Impl, Outputs
from harness.contract.agreement import check_agreement
from harness.contract.inputs import make_inputs
from harness.contract.problem import Problem
from harness.contract.registry import discover
from harness.measuring.memory import saved_bytes

P = Problem(batch=4, length=10, input_size=6, hidden=8, layers=2)
FLOAT32 = 4


def kept_activations(p: Problem) -> int:
    """What the step Functions keep that is neither an input nor a weight, in bytes: per step its
    gates [B, 4H] and tanh(c) [B, H]; h_prev and c_prev [B, H] from the second step on (the first
    step's are views of h0 and c0); and from the second layer on, its input: the layer below's
    stacked outputs [T, B, H] (the first layer's x_t are views of x)."""
    T, B, H, L = p.length, p.batch, p.hidden, p.layers
    per_layer = T * B * 4 * H + T * B * H + 2 * (T - 1) * B * H
    return FLOAT32 * (L * per_layer + (L - 1) * T * B * H)


def _step_forward(x_t, h, c, w_ih, w_hh, b_ih, b_hh):
    pre = x_t @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh
    i, f, g, o = pre.chunk(4, dim=1)
    gates = torch.cat([torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)], dim=1)
    i, f, g, o = gates.chunk(4, dim=1)
    c_new = f * c + i * g
    tanh_c = torch.tanh(c_new)
    return o * tanh_c, c_new, gates, tanh_c


def _step_backward(dh, dc, x_t, h, c, w_ih, w_hh, gates, tanh_c):
    i, f, g, o = gates.chunk(4, dim=1)
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    d_pre = torch.cat([dc * g * i * (1 - i), dc * c * f * (1 - f), dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)],
                      dim=1)
    db = d_pre.sum(0)
    return d_pre @ w_ih, d_pre @ w_hh, dc * f, d_pre.t() @ x_t, d_pre.t() @ h, db, db


class StepOnCtx(torch.autograd.Function):
    """Keeps everything as ctx attributes, some nested; the non-tensor ones are not memory."""

    @staticmethod
    def forward(ctx, x_t, h, c, w_ih, w_hh, b_ih, b_hh):
        h_new, c_new, gates, tanh_c = _step_forward(x_t, h, c, w_ih, w_hh, b_ih, b_hh)
        ctx.x_t, ctx.state = x_t, (h, c)
        ctx.weights = {"w_ih": w_ih, "w_hh": w_hh}
        ctx.cache = [gates, {"tanh_c": tanh_c}]
        ctx.hidden, ctx.label, ctx.nothing = h.shape[1], "lstm step", None
        return h_new, c_new

    @staticmethod
    def backward(ctx, dh, dc):
        dx, dh_prev, dc_prev, dw_ih, dw_hh, db_ih, db_hh = _step_backward(
            dh, dc, ctx.x_t, *ctx.state, ctx.weights["w_ih"], ctx.weights["w_hh"], ctx.cache[0],
            ctx.cache[1]["tanh_c"])
        return dx, dh_prev, dc_prev, dw_ih, dw_hh, db_ih, db_hh


class StepSaved(torch.autograd.Function):
    """The same step, keeping the same tensors through save_for_backward."""

    @staticmethod
    def forward(ctx, x_t, h, c, w_ih, w_hh, b_ih, b_hh):
        h_new, c_new, gates, tanh_c = _step_forward(x_t, h, c, w_ih, w_hh, b_ih, b_hh)
        ctx.save_for_backward(x_t, h, c, w_ih, w_hh, gates, tanh_c)
        return h_new, c_new

    @staticmethod
    def backward(ctx, dh, dc):
        return _step_backward(dh, dc, *ctx.saved_tensors)


class StepBothWays(StepSaved):
    """Saves its tensors and keeps the activations and the inputs on ctx as well: each counts once."""

    @staticmethod
    def forward(ctx, x_t, h, c, w_ih, w_hh, b_ih, b_hh):
        h_new, c_new, gates, tanh_c = _step_forward(x_t, h, c, w_ih, w_hh, b_ih, b_hh)
        ctx.save_for_backward(x_t, h, c, w_ih, w_hh, gates, tanh_c)
        ctx.gates, ctx.cache, ctx.inputs = gates, (tanh_c, [gates]), [x_t, h, c, w_ih]
        return h_new, c_new


class StepKeepsInputsOnly(torch.autograd.Function):
    """Keeps only its inputs and the weights on ctx (it would recompute the rest): nothing counts."""

    @staticmethod
    def forward(ctx, x_t, h, c, w_ih, w_hh, b_ih, b_hh):
        ctx.inputs = [x_t, h, c]
        ctx.weights = (w_ih, w_hh, b_ih, b_hh)
        return _step_forward(x_t, h, c, w_ih, w_hh, b_ih, b_hh)[:2]

    @staticmethod
    def backward(ctx, dh, dc):
        raise NotImplementedError


class StepLSTM(AutogradImpl):
    """An LSTM of custom-Function steps, autograd chaining them: the graph stays on the object
    (AutogradImpl keeps its outputs), the returned outputs are detached."""

    name = "ctx_steps"
    description = "test LSTM: a custom autograd Function per step, activations kept as ctx attributes"
    step = StepOnCtx

    def __init__(self, problem, weights):
        super().__init__(problem, weights)
        self.weights = [w.map(lambda t: t.detach().clone().requires_grad_(True)) for w in weights]

    def parameters(self):
        return self.weights

    def _forward(self, x, h0, c0):
        layer_input, h_last, c_last = x, [], []
        for layer, w in enumerate(self.weights):
            h, c, steps = h0[layer], c0[layer], []
            for x_t in layer_input:
                h, c = self.step.apply(x_t, h, c, *w.tensors())
                steps.append(h)
            layer_input = torch.stack(steps)
            h_last.append(h)
            c_last.append(c)
        return layer_input, torch.stack(h_last), torch.stack(c_last)


class SavedStepLSTM(StepLSTM):
    name = "saved_steps"
    step = StepSaved


class BothWaysStepLSTM(StepLSTM):
    name = "both_ways_steps"
    step = StepBothWays


class InputsOnlyStepLSTM(StepLSTM):
    name = "inputs_only_steps"
    step = StepKeepsInputsOnly


class GraphInOutputs(Impl):
    """Not an AutogradImpl: keeps nothing on itself and returns outputs that carry the graph."""

    name = "graph_in_outputs"
    description = "test LSTM whose returned outputs are the graph's roots"

    def __init__(self, problem, weights):
        super().__init__(problem, weights)
        self._lstm = StepLSTM(problem, weights)

    def parameter_tensors(self):
        return self._lstm.parameter_tensors()

    def forward(self, x, h0, c0):
        with torch.enable_grad():
            return Outputs(*self._lstm._forward(*(t.detach().requires_grad_(True) for t in (x, h0, c0))))

    def backward(self, dy, dh_n, dc_n, gate_clip=None):
        raise NotImplementedError


def measure(cls, p: Problem = P) -> int | None:
    inputs = make_inputs(p)
    return saved_bytes(cls(p, inputs.weights), inputs)


@pytest.mark.parametrize("cls", [StepLSTM, SavedStepLSTM, BothWaysStepLSTM])
def test_the_step_lstms_are_correct_lstms(cls):
    agreement, _ = check_agreement(cls, P)
    assert agreement.passed, agreement.summary() + "\n" + agreement.table()


def test_activations_kept_as_ctx_attributes_are_counted():
    assert kept_activations(P) == 18_688
    assert measure(StepLSTM) == kept_activations(P)


def test_ctx_attributes_and_save_for_backward_report_the_same():
    assert measure(SavedStepLSTM) == measure(StepLSTM) == kept_activations(P)


def test_a_tensor_both_saved_and_on_ctx_counts_once():
    assert measure(BothWaysStepLSTM) == kept_activations(P)


def test_inputs_and_weights_on_ctx_are_not_counted():
    one_step = P.replace(length=1, layers=1)  # its h_prev and c_prev are h0's and c0's
    assert measure(InputsOnlyStepLSTM, one_step) == 0
    # Longer: only the previous steps' h and c are kept, and the second layer's input.
    T, B, H = P.length, P.batch, P.hidden
    assert measure(InputsOnlyStepLSTM) == FLOAT32 * (P.layers * 2 * (T - 1) * B * H + T * B * H)


def test_the_graph_is_found_from_the_returned_outputs_too():
    assert measure(GraphInOutputs) == kept_activations(P)


def test_it_grows_with_the_sequence():
    longer = P.replace(length=2 * P.length)
    assert measure(StepLSTM, longer) == kept_activations(longer) > kept_activations(P)


def _hooked_only(name: str, p: Problem) -> int:
    """What saved-tensor hooks alone see (the measure before ctx attributes counted)."""
    inputs = make_inputs(p)
    impl = discover().get(name)(p, inputs.weights)
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        impl.forward(inputs.x, inputs.h0, inputs.c0)
    exclude = {t.untyped_storage().data_ptr() for t in (inputs.x, inputs.h0, inputs.c0, *impl.parameter_tensors(),
                                                        *(t for w in inputs.weights for t in w.tensors()))}
    return sum(n for ptr, n in seen.items() if ptr not in exclude)


@pytest.mark.parametrize("name", ["modular", "cudnn"])
def test_builtin_autograd_impls_are_unchanged_and_positive(name):
    measured = measure(discover().get(name))
    assert measured > 0
    assert measured == _hooked_only(name, P)  # no custom Functions: the graph walk adds nothing


def test_hand_written_fused_reports_its_own_buffers():
    inputs = make_inputs(P)
    fused = discover().get("fused")(P, inputs.weights)
    measured = saved_bytes(fused, inputs)
    assert measured == fused.saved_bytes()
    per_layer = 4 * (10 * 4 * 32 + 2 * 11 * 4 * 8 + 10 * 4 * 8)  # gates; h, c (T+1 rows); tanh_c (T rows)
    assert measured == 2 * per_layer
