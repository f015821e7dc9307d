"""pytest plugin: the --lstm-* options, the grid parametrisation, and what goes into the results.

Loaded through the `pytest11` entry point into every pytest run of an environment where the
harness is installed, so it stays inert (no discovery, no imports of implementations, nothing
added to another suite's benchmark JSON) unless the run is the harness's: an --lstm-* option was
given, a conftest of the run declares LSTM_HARNESS_SUITES (suites/conftest.py does), or a
collected test asks for the `lstm_agreement_point` or `lstm_timed_case` fixtures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.contract.run_options import RUN_OPTIONS, add_run_options
from harness.record.schema import RESULTS_KEY, NotTimed, RunSection

if TYPE_CHECKING:  # the harness's modules import torch: only a harness run pays for that
    from harness.measuring.session import BenchSession

SESSION = pytest.StashKey["BenchSession"]()
# dest -> default, for every option of the harness
OPTIONS = {option.dest: option.initial for option in RUN_OPTIONS}
SUITE_MARK = "LSTM_HARNESS_SUITES"


def pytest_addoption(parser):
    add_run_options(parser.getgroup("lstm", "LSTM benchmark harness").addoption)


def _harness_run(config) -> bool:
    if any(config.getoption(dest) not in (None, default) for dest, default in OPTIONS.items()):
        return True
    return any(getattr(plugin, SUITE_MARK, False) for plugin in config.pluginmanager.get_plugins())


def activate(config) -> BenchSession:
    """Validate the options and build the run's session (once): from here on the plugin acts."""
    if SESSION not in config.stash:
        from harness.contract.grid import GridError
        from harness.contract.registry import RegistryError
        from harness.measuring.allocator import keep_freed_memory
        from harness.measuring.session import BenchSession, Settings

        try:
            settings = Settings.from_options(config.getoption)
        except (GridError, RegistryError, ValueError) as exc:
            raise pytest.UsageError(str(exc)) from None
        config.stash[SESSION] = BenchSession(settings)
        settings.allocator = keep_freed_memory()
    return config.stash[SESSION]


def active(config) -> bool:
    return SESSION in config.stash


def pytest_configure(config):
    if _harness_run(config):
        activate(config)


def pytest_collection_modifyitems(config, items):
    # A run that collected the speed suite is kept, with raw timings, under .benchmarks/
    # (NNNN_lstm-<grid>-<device>.json) so `python -m harness.report` alone finds the newest.
    bench = getattr(config, "_benchmarksession", None)
    timed = any("lstm_timed_case" in getattr(item, "fixturenames", ()) for item in items)
    if active(config) and bench is not None and timed and not (bench.save or bench.autosave):
        s = bench_session(config).settings
        bench.autosave = f"lstm-{s.grid.name}-{s.device}"
        bench.save_data = True


def bench_session(config) -> BenchSession:
    return config.stash[SESSION]


def pytest_report_header(config):
    if not active(config):
        return []
    from harness.measuring import environment

    s = bench_session(config).settings
    overrides = ", ".join(f"{k}={','.join(map(str, v))}" for k, v in s.explicit.items())
    return [
        f"lstm-harness: {environment.device_name(environment.describe(s.device))}",
        f"lstm-harness: grid {s.grid.name!r} ({s.grid.about})" + (f"; overridden: {overrides}" if overrides else ""),
        f"lstm-harness: {len(s.problems)} problem(s) x {len(s.impls)} implementation(s): "
        f"{', '.join(r.name for r in s.impls)}",
    ]


def pytest_generate_tests(metafunc):
    # Parametrised by id strings (resolved by the fixtures below) so the results JSON's
    # "params" stay plain text.
    if not {"lstm_timed_case", "lstm_agreement_point"} & set(metafunc.fixturenames):
        return
    session = activate(metafunc.config)
    for name, cases in (("lstm_timed_case", session.timed_cases()),
                        ("lstm_agreement_point", session.agreement_points())):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, list(cases), indirect=True)
            return


@pytest.fixture
def lstm_session(request) -> BenchSession:
    return activate(request.config)


@pytest.fixture
def lstm_timed_case(request, lstm_session):
    """(registration, problem, phase) of one timed measurement."""
    return lstm_session.timed_cases()[request.param]


@pytest.fixture
def lstm_agreement_point(request, lstm_session):
    """(registration, problem) of one agreement check."""
    return lstm_session.agreement_points()[request.param]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    case_id = getattr(item, "callspec", None) and item.callspec.params.get("lstm_timed_case")
    if case_id and active(item.config) and report.when == "call":
        bench_session(item.config).calls_run += 1  # a run that timed nothing at all writes no file
    if case_id and active(item.config) and report.when == "call" and not report.passed:
        reg, problem, phase = bench_session(item.config).timed_cases()[case_id]
        reason = (report.longrepr[2].removeprefix("Skipped: ")
                  if report.skipped and isinstance(report.longrepr, tuple)
                  else getattr(call.excinfo, "value", report.longreprtext))
        bench_session(item.config).outcomes.append(NotTimed(
            impl=reg.name, phase=phase, problem=problem, outcome="skipped" if report.skipped else "failed",
            reason=str(reason).strip().splitlines()[0][:300] if str(reason).strip() else "",
        ))
    return report


def pytest_benchmark_update_machine_info(config, machine_info):
    if active(config):
        from harness.measuring import environment

        machine_info[RESULTS_KEY] = environment.describe(bench_session(config).settings.device)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    if not active(config):
        return
    session = bench_session(config)
    s = session.settings
    # The last word on what a results file may hold: a measurement of ours without the mark of
    # its check after timing never reaches the file, whatever path it took to get here.
    output_json["benchmarks"] = [b for b in output_json.get("benchmarks", [])
                                 if "impl" not in (b.get("extra_info") or {}) or b["extra_info"].get("verified")]
    output_json[RESULTS_KEY] = RunSection(
        grid=s.grid.name, grid_about=s.grid.about, device=s.device, seed=s.seed, warmup=s.warmup, rounds=s.rounds,
        min_rounds=s.min_rounds, max_time=s.max_time, allocator=s.allocator, interleave=s.interleave,
        interference=session.interference.describe(), interference_threshold=s.threshold,
        redo_budget=s.redo_budget,
        not_timed=list(session.outcomes),
        ceilings=[c.as_dict() for c in session.ceilings.values()],
    ).to_json()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Every agreement error measured before timing, beside its tolerance (per mode, check and implementation)."""
    if not active(config):
        return
    from harness.measuring.calibration import calibration_table

    table = calibration_table(bench_session(config).checks)
    if table:
        terminalreporter.write_sep("-", "agreement errors beside their tolerances (worst over the run's points)")
        terminalreporter.write_line(table)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """pytest-benchmark writes no file for a run without a single timed benchmark; a harness run
    in which every point failed must still leave its results (the failures) where the report
    looks, or the report would silently show the previous run."""
    bench = getattr(session.config, "_benchmarksession", None)
    ran = active(session.config) and bench_session(session.config).calls_run > 0
    interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
    if ran and not interrupted and bench is not None and not bench.benchmarks and not bench.disabled:
        _save_without_benchmarks(session.config, bench)
    return (yield)


def _save_without_benchmarks(config, bench) -> None:
    save = bench.save or bench.autosave
    if not (save or bench.json):
        return
    machine_info = bench.get_machine_info()
    commit_info = config.hook.pytest_benchmark_generate_commit_info(config=config)
    config.hook.pytest_benchmark_update_commit_info(config=config, commit_info=commit_info)

    def output(include_data: bool) -> dict:
        data = config.hook.pytest_benchmark_generate_json(config=config, benchmarks=[], include_data=include_data,
                                                          machine_info=machine_info, commit_info=commit_info)
        config.hook.pytest_benchmark_update_json(config=config, benchmarks=[], output_json=data)
        return data

    if bench.json:
        bench.save_json(output(True))
    if save:
        bench.storage.save(output(bench.save_data), save)
    # Saved: pytest-benchmark's own finish would only warn that there was nothing to save.
    bench.json, bench.save, bench.autosave = None, False, False
