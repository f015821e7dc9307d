"""The `triton` implementation's very kernels, run by Triton's interpreter on the CPU.

TRITON_INTERPRET must be set before the kernels are defined (older Triton: before triton is
imported), and other tests in this process may have imported both: every check that runs the
kernels runs in a subprocess started with TRITON_INTERPRET=1. The first test blocks triton's
import altogether: the module must register and say why it cannot run.
"""

import importlib.util
import json
import re

import pytest

from harness.contract.problem import Problem
from impls.triton_lstm import NEEDS_GPU, NOT_INSTALLED, TritonLSTM

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="Triton is not installed (pip install 'lstm-harness[peers]')")

TINY = Problem(batch=2, length=2, input_size=4, hidden=4, layers=1)


@pytest.fixture
def interpreted(run_python, monkeypatch):
    """run_python with TRITON_INTERPRET=1 (the child's environment is read from os.environ)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    return run_python


def test_without_triton_the_module_registers_and_says_why_not(run_python):
    code = ("import sys; sys.modules['triton'] = None\n"  # every `import triton` now fails
            "from harness.contract.problem import Problem\n"
            "from harness.contract.registry import REGISTRY\n"
            "import impls.triton_lstm\n"
            "cls = REGISTRY.get('triton')\n"
            "s = cls.supports(Problem(2, 2, 4, 4, 1, device='cuda'))\n"
            "print(s.ok, s.reason, '|', cls.backend(Problem(2, 2, 4, 4, 1)))")
    proc = run_python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"False {NOT_INSTALLED} | {NOT_INSTALLED}"


@needs_triton
def test_on_the_cpu_without_the_interpreter_it_declines_with_the_reason(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    support = TritonLSTM.supports(TINY)
    assert not support.ok and not support.timed
    assert support.reason.startswith(NEEDS_GPU) and "TRITON_INTERPRET=1" in support.reason


@needs_triton
def test_agreement_suite_passes_under_the_interpreter(interpreted):
    """The harness's own checks (set 0, the saturating set, unmodified inputs, process state) on
    two hidden sizes, one not a power of two, one and two layers, every CPU dtype."""
    proc = interpreted("-m", "pytest", "suites/test_agreement.py", "-p", "no:cacheprovider", "-rA", "-q",
                       "--lstm-device", "cpu", "--lstm-impls", "triton,fused", "--lstm-batch", "3",
                       "--lstm-length", "5", "--lstm-input", "7", "--lstm-hidden", "24,32", "--lstm-layers", "1,2",
                       "--lstm-dtype", "float32,float64,bfloat16", timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    outcomes = re.findall(r"^(\w+) suites/test_agreement.py::test_agreement\[(triton-[^\]]+)\]", proc.stdout, re.M)
    assert len(outcomes) == 2 * 2 * 3 and {o for o, _ in outcomes} == {"PASSED"}, proc.stdout[-4000:]


# Run in the child: builds both implementations on one problem and prints what the parent asserts.
CLIP_CHECK = """
import json, torch
from harness.contract.agreement import relative_error
from harness.contract.inputs import make_inputs
from harness.contract.problem import Problem
from impls.fused import FusedLSTM
from impls.kernels import triton_cell_kernels as kernels
from impls.triton_lstm import TritonLSTM

problem = Problem(batch=3, length=5, input_size=7, hidden=24, layers=2, dtype="float64")
inputs = make_inputs(problem)
grads, max_da = {}, {}
for clip in (None, CLIP):
    for cls in (TritonLSTM, FusedLSTM):
        impl = cls(problem, inputs.weights)
        out = impl.forward(inputs.x, inputs.h0, inputs.c0)
        named = {**out.named(), **impl.backward(inputs.dy, inputs.dh_n, inputs.dc_n, gate_clip=clip).named()}
        grads[cls.name, clip] = {k: v.clone() for k, v in named.items()}
        max_da[f"{cls.name} {clip}"] = max(float(layer.d_gates.abs().max()) for layer in impl.layers)
# New weights in place (set_weights) give what a fresh `fused` on them gives.
new = make_inputs(problem, seed=1)
impl = TritonLSTM(problem, inputs.weights)
impl.forward(inputs.x, inputs.h0, inputs.c0)
impl.set_weights(new.weights)
fresh = FusedLSTM(problem, new.weights)
named = [{**m.forward(new.x, new.h0, new.c0).named(), **m.backward(new.dy, new.dh_n, new.dc_n).named()}
         for m in (impl, fresh)]
set_weights = max(relative_error(named[0][k], named[1][k]) for k in named[1])
agree = {str(clip): max(relative_error(grads["triton", clip][k], grads["fused", clip][k]) for k in grads["fused", clip])
         for clip in (None, CLIP)}
# The kernels' own bfloat16 rounding against torch's (round to nearest even), bit for bit.
z = (torch.rand(3, 4 * 24, dtype=torch.float64) * 2 - 1) * 4
c0 = torch.rand(3, 24, dtype=torch.float64).to(torch.bfloat16)
results = {}
for dtype in (torch.bfloat16, torch.float32):
    bufs = [z.to(torch.bfloat16).to(dtype)] + [torch.empty(3, 24, dtype=dtype) for _ in range(3)]
    kernels.forward_step(bufs[0], c0.to(dtype), *bufs[1:])
    results[dtype] = bufs
rounding_ok = all(torch.equal(b, f.to(torch.bfloat16)) for b, f in zip(results[torch.bfloat16], results[torch.float32]))
print(json.dumps({"interpreted": kernels.interpreted(), "agree": agree, "max_da": max_da,
                  "clip_changed": relative_error(grads["fused", CLIP]["dx"], grads["fused", None]["dx"]),
                  "rounding_ok": rounding_ok, "set_weights": set_weights}))
"""


@needs_triton
def test_gate_clipping_matches_fused_under_the_interpreter(interpreted):
    clip = 0.01
    proc = interpreted("-c", CLIP_CHECK.replace("CLIP", repr(clip)), timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["interpreted"]
    # Clipping bites: unclipped dA exceeds the threshold, clipped dA stays within it, dx changes.
    assert got["max_da"]["triton None"] > 2 * clip and got["max_da"]["fused None"] > 2 * clip, got
    assert got["max_da"][f"triton {clip}"] <= clip and got["max_da"][f"fused {clip}"] <= clip, got
    assert got["clip_changed"] > 1e-3, got
    assert got["agree"]["None"] < 1e-12 and got["agree"][str(clip)] < 1e-12, got
    assert got["set_weights"] < 1e-12, got
    assert got["rounding_ok"], "the kernels' bfloat16 stores differ from torch's round to nearest even"


@needs_triton
def test_speed_suite_lists_it_as_not_timed_under_the_interpreter(interpreted, tmp_path):
    out = tmp_path / "results.json"
    proc = interpreted("-m", "pytest", "suites/test_speed.py", "-p", "no:cacheprovider", "-q", "--benchmark-only",
                       f"--benchmark-storage=file://{tmp_path / 'storage'}", "--benchmark-json", str(out),
                       "--lstm-device", "cpu", "--lstm-impls", "triton", "--lstm-batch", "2", "--lstm-length", "2",
                       "--lstm-hidden", "4", "--lstm-layers", "1", timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    not_timed = json.loads(out.read_text())["lstm_harness"]["not_timed"]
    assert sorted(e["phase"] for e in not_timed) == ["backward", "forward", "total"]
    assert all(e["impl"] == "triton" and e["outcome"] == "skipped" and "interpreter is not a speed" in e["reason"]
               for e in not_timed), not_timed
