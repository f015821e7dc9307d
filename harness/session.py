"""One benchmark run's settings and state: what to run, and the agreement verdicts so far.

The pytest plugin builds a BenchSession from the command line; the suites ask it for
validated implementations. It keeps only the current (implementation, problem) prepared, so a
large grid does not hold every implementation's buffers at once.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import torch

from harness.agreement import Agreement, AgreementError, check_agreement
from harness.grid import (
    Grid,
    GridError,
    build_problems,
    parse_choices,
    parse_number,
    parse_positive_ints,
    resolve_device,
    resolve_grid,
)
from harness.impl import Impl
from harness.memory import saved_bytes
from harness.problem import DTYPES, PHASES, Inputs, Problem, dtype_support, make_inputs
from harness.registry import Registration, Registry, discover
from harness.roofline import Ceiling, measure_ceiling


@dataclass
class Settings:
    device: str
    grid: Grid
    problems: list[Problem]
    impls: list[Registration]
    seed: int = 0
    rounds: int | None = None  # None: as many as fit in max_time, at least min_rounds
    min_rounds: int = 5
    warmup: int = 1
    max_time: float = 1.0
    explicit: dict = field(default_factory=dict)  # axis values given on the command line
    allocator: str = ""  # what harness.allocator did, recorded with the results

    @classmethod
    def from_options(cls, get, registry: Registry | None = None) -> Settings:
        """Validate every option (get(name) returns its raw value) before anything runs."""
        plugins = get("lstm_plugin") or []
        registry = registry if registry is not None else discover(plugins)
        device = resolve_device("--lstm-device", get("lstm_device") or "auto")
        grid = resolve_grid("--lstm-grid", get("lstm_grid") or "auto", device)
        names = parse_choices("--lstm-impls", get("lstm_impls"), registry.names())
        explicit = {axis: parse_positive_ints(f"--lstm-{opt}", get(f"lstm_{opt}"))
                    for axis, opt in (("batch", "batch"), ("length", "length"), ("hidden", "hidden"),
                                      ("input_size", "input"), ("layers", "layers"))}
        dtypes = parse_choices("--lstm-dtype", get("lstm_dtype"), list(DTYPES)) or ("float32",)
        for dtype in dtypes:
            ok, reason = dtype_support(device, dtype)
            if not ok:
                raise GridError(f"--lstm-dtype: {dtype} cannot run on {device}: {reason}")
        problems = build_problems(grid, device, dtypes, **explicit)
        timing = {
            "rounds": parse_number("--lstm-rounds", get("lstm_rounds"), int, minimum=1),
            "min_rounds": parse_number("--lstm-min-rounds", get("lstm_min_rounds"), int, minimum=1),
            "warmup": parse_number("--lstm-warmup", get("lstm_warmup"), int, minimum=0),
            "max_time": parse_number("--lstm-max-time", get("lstm_max_time"), float, minimum=1e-6),
        }
        seed = parse_number("--lstm-seed", get("lstm_seed"), int, minimum=0)
        return cls(device=device, grid=grid, problems=problems, impls=registry.select(names),
                   seed=seed if seed is not None else 0,
                   explicit={k: v for k, v in explicit.items() if v},
                   **{k: v for k, v in timing.items() if v is not None})


class BenchSession:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.agreements: dict[tuple[str, Problem], Agreement] = {}
        self.saved: dict[tuple[str, Problem], int | None] = {}  # bytes kept from forward for backward
        self.ceilings: dict[tuple[str, str], Ceiling] = {}
        self.outcomes: list[dict] = []  # points that were skipped or failed, for the results file
        self._inputs: tuple[Problem, Inputs] | None = None
        self._prepared: tuple[tuple[str, Problem], Impl] | None = None

    def cases(self) -> dict[str, tuple[Registration, Problem, str]]:
        """Timed measurements by test id, problem-major so each (implementation, problem) is
        prepared once for its three phases."""
        return {f"{reg.name}-{problem.id}-{phase}": (reg, problem, phase)
                for problem in self.settings.problems for reg in self.settings.impls for phase in PHASES}

    def points(self) -> dict[str, tuple[Registration, Problem]]:
        """Agreement checks by test id."""
        return {f"{reg.name}-{problem.id}": (reg, problem)
                for problem in self.settings.problems for reg in self.settings.impls}

    def inputs(self, problem: Problem) -> Inputs:
        if self._inputs is None or self._inputs[0] != problem:
            self._inputs = None  # let the previous problem's tensors go before the new ones exist
            self._inputs = (problem, make_inputs(problem, self.settings.seed))
        return self._inputs[1]

    def validated(self, reg: Registration, problem: Problem) -> tuple[Impl, Inputs, Agreement]:
        """The prepared implementation, once it has passed agreement on `problem`.

        Raises AgreementError (with the table of what disagreed) when it has not.
        """
        key = (reg.name, problem)
        inputs = self.inputs(problem)
        agreement = self.agreements.get(key)
        if agreement is not None and not agreement.passed:
            raise AgreementError(agreement)
        if self._prepared is not None and self._prepared[0] == key:
            return self._prepared[1], inputs, agreement
        self.release()
        if agreement is None:
            agreement, impl = check_agreement(reg.cls, problem, self.settings.seed, inputs)
            self.agreements[key] = agreement
            if not agreement.passed:
                raise AgreementError(agreement)
            self.saved[key] = saved_bytes(impl, inputs)
        else:
            impl = reg.cls(problem, inputs.weights)
        self._prepared = (key, impl)
        return impl, inputs, agreement

    def ceiling(self, problem: Problem) -> Ceiling:
        """The device's GEMM ceiling for the problem's dtype, measured once per run."""
        ceiling = measure_ceiling(problem.device, problem.dtype)
        self.ceilings[(problem.device, problem.dtype)] = ceiling
        return ceiling

    def release(self) -> None:
        """Drop the prepared implementation (after a crash or out-of-memory too)."""
        self._prepared = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

