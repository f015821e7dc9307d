"""Every agreement error measured before timing, beside its tolerance: what a first run on a new device or
precision mode prints, so that the tolerance table (harness.contract.agreement) is set from measurements.

One row per precision mode, kind of check (input set 0, zero initial state, saturating set) and implementation:
the worst error over the points of the run, the tolerance, their ratio. A ratio near 1 on a correct
implementation is a tolerance too tight; far below it, one that would let a wrong implementation pass.
"""

from __future__ import annotations

from collections.abc import Iterable

from tabulate import tabulate

from harness.contract.agreement import Agreement

# check-string prefix -> kind, the longer prefix first; ORDER: the order of the rows
KINDS = (("input set 0 with zero", "zero initial state"), ("saturating", "saturating set"),
         ("input set 0", "input set 0"))
ORDER = ("input set 0", "zero initial state", "saturating set")


def kind_of(check: str) -> str:
    return next((name for prefix, name in KINDS if check.startswith(prefix)), check)


def calibration_rows(checks: Iterable[Agreement]) -> list[list]:
    worst: dict[tuple[str, str, str], tuple[float, float, int, bool]] = {}
    for a in checks:
        if not a.errors:
            continue
        key = (a.problem.dtype, kind_of(a.check), a.impl)
        error, tolerance, points, passed = worst.get(key, (0.0, a.tolerance, 0, True))
        if not a.max_error <= error:  # the larger, and a NaN (no comparison holds) is the worst of all
            error = a.max_error
        worst[key] = (error, a.tolerance, points + 1, passed and a.passed)
    order = {name: i for i, name in enumerate(ORDER)}
    return [[dtype, kind, impl, points, f"{error:.2e}", f"{tolerance:.0e}", f"{error / tolerance:.3f}",
             "ok" if passed else "FAILED"]
            for (dtype, kind, impl), (error, tolerance, points, passed)
            in sorted(worst.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9), kv[0][2]))]


def calibration_table(checks: Iterable[Agreement]) -> str:
    rows = calibration_rows(checks)
    if not rows:
        return ""
    return tabulate(rows, headers=["mode", "check", "implementation", "points", "worst error", "tolerance",
                                   "error / tolerance", "verdict"], disable_numparse=True)
