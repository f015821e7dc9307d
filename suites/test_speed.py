"""Forward, backward and total time of every implementation on every grid point.

Each measurement is taken only after the implementation passed agreement on that point.
An implementation that fails, crashes or runs out of memory fails that point alone.
"""

import pytest
import torch

from harness.agreement import AgreementError
from harness.timing import choose_rounds, phase_functions, precision, probe


def test_speed(benchmark, lstm_case, lstm_session):
    reg, problem, phase = lstm_case
    settings = lstm_session.settings
    support = reg.cls.supports(problem)
    if not support.ok:
        pytest.skip(f"{reg.name} cannot run {problem.id} here: {support.reason}")
    try:
        with precision(problem.dtype) as flags:
            ceiling = lstm_session.ceiling(problem)  # measured before any implementation is timed
            impl, inputs, agreement = lstm_session.validated(reg, problem)
            target, setup = phase_functions(impl, inputs, phase, problem.device)
            seconds, peak = probe(target, setup, problem.device)
            rounds = settings.rounds or choose_rounds(seconds, settings.max_time, settings.min_rounds)
            benchmark.group = f"{problem.id} {phase}"
            benchmark.extra_info.update(
                impl=reg.name, backend=reg.cls.backend(problem), origin=reg.origin, phase=phase,
                problem_id=problem.id, **problem.as_dict(), flops=problem.flops(phase),
                agreement_max_error=agreement.max_error, agreement_tolerance=agreement.tolerance,
                agreement_errors=agreement.errors, seed=settings.seed, warmup_rounds=settings.warmup,
                ceiling_gflops=ceiling.gflops, saved_bytes=lstm_session.saved.get((reg.name, problem)),
                peak_bytes=peak,
                **flags,
            )
            benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=settings.warmup)
    except AgreementError as exc:
        pytest.fail(f"not timed: {exc}", pytrace=False)
    except torch.OutOfMemoryError as exc:
        lstm_session.release()
        pytest.fail(f"{reg.name} ran out of memory on {problem.id}: {exc}", pytrace=False)
    except Exception:
        lstm_session.release()
        raise
