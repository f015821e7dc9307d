"""`python -m harness.gpu_check --out DIR`: the whole GPU check in one command, offline.

For a machine lent for a few minutes, with no network and nothing to install: it runs from a
plain checkout (`PYTHONPATH=. python3 -m harness.gpu_check --out DIR`) with the packages
already there (torch with CUDA, CuPy, pytest, pytest-benchmark, pandas, seaborn), loading the
pytest plugins by name rather than through installed entry points. Each step writes its log
under DIR and reports ok, failed or skipped (with the reason); a failed step never stops the
ones after it. Without a CUDA device it runs what the CPU can (and says which steps it skipped),
so the script itself is tested on machines without a GPU.

Every registered implementation takes part in every step that runs implementations: the peers
(`compiled`, `triton`, and FlashRNN's three backends) too. FlashRNN is not on a bare GPU machine:
carry it in a folder and put that on PYTHONPATH (`pip install --no-deps --target .gpu-deps flashrnn
einops`, then `PYTHONPATH=.:.gpu-deps`); without it its rows say "not installed".

Steps: versions; `harness list`; agreement on the smoke grid in every precision mode; agreement
after set_weights for every implementation; CuPy fed from a busy side stream; the timed smoke
grid; a few points at the seed's shapes (hidden 2048), timed; the report of both.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: harness/commands/ is two below it
SKIP = "skipped"
# Modes per device: the CPU runs no tf32 or float16 (harness.contract.problem.dtype_support).
MODES = {"cuda": "float32,float64,tf32,bfloat16,float16", "cpu": "float32,float64,bfloat16"}


class Skip(Exception):
    """A step that cannot run here; the message says why."""


@dataclass
class Check:
    out: Path
    device: str
    max_time: float
    plots: bool
    deadline: float
    results: list[dict] = field(default_factory=list)
    impls: str | None = None  # --impl: only these implementations (default: every registered one)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def python(self, name: str, *args: str) -> str:
        """Run `python ARGS` from the checkout with the plugins named explicitly; the output
        goes to the step's log; a non-zero exit is the step's failure."""
        if self.remaining() < 5:
            raise Skip("the time budget is spent")
        env = dict(_child_env(self), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")  # installed or not, the same two plugins
        try:
            proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=self.remaining())
        except subprocess.TimeoutExpired as exc:
            (self.out / f"{name}.log").write_text(_text(exc.stdout) + _text(exc.stderr))
            raise RuntimeError(f"stopped at the time budget after {exc.timeout:.0f} s (partial log: {name}.log)") \
                from None
        (self.out / f"{name}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["(no output)"]
            raise RuntimeError(f"exit status {proc.returncode}: {tail[0][:300]}")
        return proc.stdout

    def pytest(self, name: str, *args: str) -> str:
        return self.python(name, "-m", "pytest", "-p", "harness.measuring.pytest_plugin",
                           "-p", "pytest_benchmark.plugin", "-p", "no:cacheprovider", "-q",
                           "--lstm-device", self.device, *(["--lstm-impls", self.impls] if self.impls else []), *args)


def _needs_cuda(check: Check, what: str) -> None:
    if check.device != "cuda":
        raise Skip(f"{what} needs a CUDA device; none is visible here")


def step_versions(check: Check) -> str:
    import torch

    from harness.measuring import environment

    info = environment.describe(check.device)
    lines = [f"{k}: {v}" for k, v in info.items()]
    try:
        import cupy

        lines.append(f"cupy CUDA runtime: {cupy.cuda.runtime.runtimeGetVersion()}")
    except Exception as exc:  # noqa: BLE001 - absent or without a device: say so
        lines.append(f"cupy CUDA runtime: unavailable ({type(exc).__name__}: {exc})")
    for name in ("triton", "flashrnn", "einops", "pytest_benchmark", "pandas", "seaborn"):
        try:
            lines.append(f"{name}: {importlib.metadata.version(name.replace('_', '-'))}")
        except Exception as exc:  # noqa: BLE001
            lines.append(f"{name}: unavailable ({type(exc).__name__})")
    lines.append(f"CUDA visible to torch: {torch.cuda.is_available()}")
    text = "\n".join(lines)
    (check.out / "versions.log").write_text(text + "\n")
    return info["device_name"]


def step_list(check: Check) -> str:
    out = check.python("list", "-m", "harness", "list", "--device", check.device)
    return f"{len(out.strip().splitlines()) - 2} implementation(s) listed"


def step_agreement(check: Check) -> str:
    out = check.pytest("agreement", "suites/test_agreement.py", "--lstm-grid", "smoke",
                       "--lstm-dtype", MODES[check.device])
    return out.strip().splitlines()[-1]


def step_set_weights(check: Check) -> str:
    """Every implementation, built with weights A and run once, then given weights B: it must
    agree with the reference for B (a stale derived copy of A shows up here)."""
    from harness.contract.agreement import new_agreement, run_and_compare
    from harness.contract.inputs import Inputs, make_inputs
    from harness.contract.problem import Problem
    from harness.contract.reference import compute_reference
    from harness.contract.registry import discover
    from harness.measuring.timing import precision

    problem = Problem(batch=3, length=5, input_size=12, hidden=16, layers=2, device=check.device)
    first, second = make_inputs(problem, seed=1), make_inputs(problem, seed=2)
    fresh = Inputs(first.x, first.h0, first.c0, second.weights, first.dy, first.dh_n, first.dc_n)
    reference = compute_reference(fresh)
    lines, failed = [], []
    registry = discover()
    for reg in registry.select(check.impls.split(",") if check.impls else None):
        support = reg.cls.supports(problem)
        if not support.ok:
            lines.append(f"{reg.name}: skipped ({support.reason})")
            continue
        try:
            with precision(problem.dtype):  # as the suites run it: cuDNN's RNN defaults to TF32
                impl = reg.cls(problem, first.weights)
                impl.forward(first.x, first.h0, first.c0)
                impl.backward(first.dy, first.dh_n, first.dc_n)
                impl.set_weights(second.weights)
                agreement = run_and_compare(impl, fresh, reference,
                                            new_agreement(reg.name, problem, "after set_weights"))
            verdict = agreement.summary()
        except Exception as exc:  # noqa: BLE001 - one implementation's crash is its own failure
            verdict, agreement = f"{reg.name}: crashed: {type(exc).__name__}: {exc}", None
        lines.append(verdict)
        if agreement is None or not agreement.passed:
            failed.append(reg.name)
    (check.out / "set_weights.log").write_text("\n".join(lines) + "\n")
    if failed:
        raise RuntimeError(f"disagree after set_weights: {', '.join(failed)}")
    return f"{sum('passed' in line for line in lines)} implementation(s) agree after set_weights"


def step_cupy_side_stream(check: Check) -> str:
    """Inputs written on a side stream that is still busy when `cupy` is called inside it: an
    implementation that runs on a stream of its own reads them before they exist."""
    _needs_cuda(check, "the CuPy stream check")
    import torch

    from harness.contract.agreement import new_agreement, run_and_compare
    from harness.contract.inputs import make_inputs
    from harness.contract.problem import Problem
    from harness.contract.reference import compute_reference
    from harness.contract.registry import discover
    from harness.measuring.timing import precision
    from impls import cupy_lstm

    reg = discover().registration("cupy")
    problem = Problem(batch=8, length=16, input_size=64, hidden=64, layers=2, device="cuda")
    support = reg.cls.supports(problem)
    if not support.ok:
        raise Skip(f"cupy cannot run here: {support.reason}")
    import cupy

    # DLPack hand-offs order a single call correctly whatever stream CuPy uses; what must hold for
    # back-to-back calls is that its kernels run on torch's current stream: record where they ran.
    launched = []
    original = cupy_lstm.CupyGateMath.forward

    def recording(self, *args):
        launched.append((cupy.cuda.get_current_stream().ptr, torch.cuda.current_stream().cuda_stream))
        return original(self, *args)

    source = make_inputs(problem, seed=3)
    reference = compute_reference(source)
    side = torch.cuda.Stream()
    big = torch.randn(4096, 4096, device="cuda")
    side.wait_stream(torch.cuda.current_stream())  # the sources exist before the side stream copies them
    cupy_lstm.CupyGateMath.forward = recording
    try:
        with torch.cuda.stream(side), precision(problem.dtype):
            for _ in range(20):  # tens of milliseconds of queued work ahead of the copies
                big = big @ big.mul_(1e-3)
            inputs = source.map(lambda t: torch.empty_like(t).copy_(t))
            impl = reg.cls(problem, inputs.weights)
            agreement = run_and_compare(impl, inputs, reference, new_agreement("cupy", problem, "busy side stream"))
    finally:
        cupy_lstm.CupyGateMath.forward = original
    torch.cuda.synchronize()
    elsewhere = [pair for pair in launched if pair[0] != pair[1]]
    (check.out / "cupy_side_stream.log").write_text(
        f"{agreement.summary()}\n{agreement.table()}\n{len(launched)} kernel step(s), "
        f"{len(elsewhere)} on a stream other than torch's current one\n")
    if not launched or elsewhere:
        raise RuntimeError(f"{len(elsewhere)} of {len(launched)} CuPy kernel steps ran on a stream other than "
                           "torch's current one")
    if not agreement.passed:
        raise RuntimeError(agreement.summary())
    return agreement.summary()


def step_smoke(check: Check) -> str:
    out = check.pytest("smoke", "suites/test_speed.py", "--benchmark-only", "--lstm-grid", "smoke",
                       "--lstm-max-time", str(check.max_time), "--benchmark-json", str(check.out / "smoke.json"),
                       f"--benchmark-storage=file://{check.out / 'benchmarks'}")
    return out.strip().splitlines()[-1]


def step_seed_points(check: Check) -> str:
    _needs_cuda(check, "hidden 2048 (the seed's shape)")
    out = check.pytest("seed_points", "suites/test_speed.py", "--benchmark-only", "--lstm-grid", "caffe",
                       "--lstm-length", "20", "--lstm-max-time", str(check.max_time),
                       "--benchmark-json", str(check.out / "seed.json"),
                       f"--benchmark-storage=file://{check.out / 'benchmarks'}")
    return out.strip().splitlines()[-1]


def step_report(check: Check) -> str:
    files = [str(p) for p in (check.out / "smoke.json", check.out / "seed.json") if p.exists()]
    if not files:
        raise Skip("no timed run wrote results")
    check.python("report", "-m", "harness.report", *files, "--out-dir", str(check.out), "--name", "gpu-check",
                 "--baseline", "cudnn", *([] if check.plots else ["--no-plots"]))
    return f"{check.out / 'gpu-check.md'} from {len(files)} results file(s)"


STEPS: list[tuple[str, Callable[[Check], str]]] = [
    ("versions", step_versions), ("list", step_list), ("agreement", step_agreement),
    ("set_weights", step_set_weights), ("cupy_side_stream", step_cupy_side_stream), ("smoke", step_smoke),
    ("seed_points", step_seed_points), ("report", step_report),
]


# The most each step may take (seconds), whatever is left of the budget: one hung step must
# leave time for the others. Estimated on an H200: versions and list seconds, agreement and the
# seed points a minute or two (the float64 references), smoke about a minute.
STEP_CAPS = {"versions": 60, "list": 90, "agreement": 180, "set_weights": 90, "cupy_side_stream": 60,
             "smoke": 150, "seed_points": 180, "report": 90}


def run_steps(check: Check, steps=STEPS) -> list[dict]:
    """Each step in this process (the tests use this with fake steps)."""
    for name, step in steps:
        started = time.monotonic()
        detail, status = _run_one(check, step)
        _record(check, name, status, detail, time.monotonic() - started)
    return check.results


def _run_one(check: Check, step) -> tuple[str, str]:
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            return step(check), "ok"
    except Skip as exc:
        return str(exc), SKIP
    except Exception as exc:  # noqa: BLE001 - a failed step is reported; the next one still runs
        return f"{type(exc).__name__}: {exc}", "failed"


def _record(check: Check, name: str, status: str, detail: str, seconds: float) -> None:
    result = {"step": name, "status": status, "seconds": round(seconds, 1), "detail": detail}
    check.results.append(result)
    print(f"[{status:>7}] {name} ({result['seconds']} s): {detail}", flush=True)
    # After every step: a run stopped from outside still leaves what it found.
    (check.out / "summary.json").write_text(json.dumps(check.results, indent=1) + "\n")


def run_steps_isolated(check: Check, args: list[str]) -> list[dict]:
    """Each step in a child process of its own, with its own time cap: a hang, a crash of a CUDA
    library or a poisoned CUDA context costs that step only."""
    for name, _ in STEPS:
        started = time.monotonic()
        cap = min(STEP_CAPS[name], check.remaining())
        if cap < 5:
            _record(check, name, SKIP, "the time budget is spent", 0)
            continue
        result_file = check.out / f"step-{name}.json"
        result_file.unlink(missing_ok=True)
        try:
            proc = subprocess.run([sys.executable, "-m", "harness.commands.gpu_check", *args, "--step", name,
                                   "--budget", str(cap)], cwd=ROOT, capture_output=True, text=True, timeout=cap,
                                  env=_child_env(check))
            output = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            output = _text(exc.stdout) + _text(exc.stderr)
            proc = None
        (check.out / f"step-{name}.out").write_text(output)
        if result_file.exists():
            outcome = json.loads(result_file.read_text())
            status, detail = outcome["status"], outcome["detail"]
        elif proc is None:
            status, detail = "failed", f"stopped at its cap of {cap:.0f} s (output in step-{name}.out)"
        else:
            last = output.strip().splitlines()[-1:] or ["(no output)"]
            status, detail = "failed", f"the step's process died (exit status {proc.returncode}): {last[0][:300]}"
        _record(check, name, status, detail, time.monotonic() - started)
    return check.results


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def _child_env(check: Check) -> dict:
    # CuPy compiles its kernels into a cache under $HOME by default; the lent machine's may not be writable.
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                CUPY_CACHE_DIR=os.environ.get("CUPY_CACHE_DIR", str(check.out / "cupy-cache")))


def summary(check: Check) -> str:
    try:
        from tabulate import tabulate
    except ImportError:  # the summary must not depend on what the check is checking
        return "\n".join(f"{r['step']}: {r['status']} ({r['seconds']} s) {r['detail']}" for r in check.results)
    rows = [[r["step"], r["status"], r["seconds"], r["detail"]] for r in check.results]
    return tabulate(rows, headers=["step", "status", "seconds", "detail"], tablefmt="github")


HELP = "the whole GPU check in one command, offline: every step's log and a summary under --out"
EXAMPLE = "PYTHONPATH=. python3 -m harness gpu-check --out /tmp/gpu-check"


def add_arguments(parser) -> None:
    from harness.commands import options

    parser.add_argument("--out", type=Path, required=True, help="folder for every log, results file and the report")
    options.add_device(parser, help="auto: CUDA when a GPU is visible, else the CPU (GPU-only steps are then skipped)")
    parser.add_argument("--budget", type=options.positive(float), default=420.0,
                        help="seconds for all steps together (default 420); each step also has its own cap")
    parser.add_argument("--max-time", type=options.positive(float), default=0.3,
                        help="--lstm-max-time of the timed steps")
    parser.add_argument("--no-plots", action="store_true", help="report without figures")
    options.add_impl(parser, default=None, help="only these implementations, comma-separated (default: every one)")
    parser.add_argument("--step", choices=[name for name, _ in STEPS], help=argparse.SUPPRESS)  # one step, in a child


def run(args) -> int:
    parser = args.parser
    args.out = args.out.resolve()  # the steps run from the checkout's root
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is an existing file")
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    check = Check(args.out, device, args.max_time, not args.no_plots, time.monotonic() + args.budget, impls=args.impl)
    if args.step:
        detail, status = _run_one(check, dict(STEPS)[args.step])
        (args.out / f"step-{args.step}.json").write_text(json.dumps({"status": status, "detail": detail}))
        return 0
    print(f"GPU check on {device}, everything under {args.out}", flush=True)
    child_args = ["--out", str(args.out), "--device", device, "--max-time", str(args.max_time),
                  *(["--no-plots"] if args.no_plots else []), *(["--impl", args.impl] if args.impl else [])]
    run_steps_isolated(check, child_args)
    text = summary(check)
    (args.out / "summary.md").write_text(text + "\n")
    print("\n" + text)
    return 1 if any(r["status"] == "failed" for r in check.results) else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.gpu_check` (and the steps' child processes): `python -m harness gpu-check`."""
    from harness.__main__ import main as harness_main

    return harness_main(["gpu-check", *(sys.argv[1:] if argv is None else argv)],
                        command_prog="python -m harness.gpu_check")


if __name__ == "__main__":
    sys.exit(main())
