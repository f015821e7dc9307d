"""`cupy` fed from a side stream that is still busy when it is called inside it: an implementation that
runs on a stream of its own reads its inputs before they exist. Needs a GPU (the GPU check runs it)."""

import pytest
import torch

from harness.contract.agreement import new_agreement, run_and_compare
from harness.contract.inputs import make_inputs
from harness.contract.problem import Problem
from harness.contract.reference import compute_reference
from harness.contract.registry import discover
from harness.measuring.timing import precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the CuPy stream check needs a CUDA device")


def test_cupy_runs_on_torchs_current_stream_and_agrees(monkeypatch):
    from impls import cupy_lstm

    reg = discover().registration("cupy")
    problem = Problem(batch=8, length=16, input_size=64, hidden=64, layers=2, device="cuda")
    support = reg.cls.supports(problem)
    if not support.ok:
        pytest.skip(f"cupy cannot run here: {support.reason}")
    import cupy

    # DLPack hand-offs order a single call correctly whatever stream CuPy uses; what must hold for
    # back-to-back calls is that its kernels run on torch's current stream: record where they ran.
    launched = []
    original = cupy_lstm.CupyGateMath.forward

    def recording(self, *args):
        launched.append((cupy.cuda.get_current_stream().ptr, torch.cuda.current_stream().cuda_stream))
        return original(self, *args)

    monkeypatch.setattr(cupy_lstm.CupyGateMath, "forward", recording)
    source = make_inputs(problem, seed=3)
    reference = compute_reference(source)
    side = torch.cuda.Stream()
    big = torch.randn(4096, 4096, device="cuda")
    side.wait_stream(torch.cuda.current_stream())  # the sources exist before the side stream copies them
    with torch.cuda.stream(side), precision(problem.dtype):
        for _ in range(20):  # tens of milliseconds of queued work ahead of the copies
            big = big @ big.mul_(1e-3)
        inputs = source.map(lambda t: torch.empty_like(t).copy_(t))
        impl = reg.cls(problem, inputs.weights)
        agreement = run_and_compare(impl, inputs, reference, new_agreement("cupy", problem, "busy side stream"))
    torch.cuda.synchronize()
    elsewhere = [pair for pair in launched if pair[0] != pair[1]]
    print(f"{agreement.summary()}\n{agreement.table()}\n{len(launched)} kernel step(s), "
          f"{len(elsewhere)} on a stream other than torch's current one")
    assert launched and not elsewhere, (f"{len(elsewhere)} of {len(launched)} CuPy kernel steps ran on a stream "
                                        "other than torch's current one")
    assert agreement.passed, agreement.summary()
