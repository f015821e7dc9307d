"""`python -m harness gpu-check --out DIR`: the whole GPU check in one command, offline.

For a machine lent for a few minutes, with no network and nothing to install: it runs from a
plain checkout (`PYTHONPATH=. python3 -m harness gpu-check --out DIR`) with the packages already
there (torch with CUDA, CuPy, pytest, pytest-benchmark, pandas, seaborn), loading the pytest plugins
by name rather than through installed entry points.

The check is a list of steps, each one command (a harness command or a pytest run of suites/ or
tests/) in a process group of its own, its output written straight into DIR/<step>.log as it comes
(a step stopped at its cap keeps what it wrote), with its own cap in seconds; at the cap the whole
group is stopped, children included, before the next step starts. Each step reports ok, failed or
skipped (with the reason); a failed step never stops the ones after it. Without a CUDA device it
runs what the CPU can and says which steps it skipped, so the check itself is tested on machines
without a GPU. It imports no implementation: the steps' commands and tests do.

Every registered implementation takes part in every step that runs implementations: the peers
(`compiled`, `triton`, and FlashRNN's three backends) too. FlashRNN is not on a bare GPU machine:
carry it in a folder and put that on PYTHONPATH (`pip install --no-deps --target .gpu-deps flashrnn
einops`, then `PYTHONPATH=.:.gpu-deps`); without it its rows say "not installed".

Steps: versions; `harness list`; agreement on the smoke grid in every precision mode (each log ends with
every measured error beside its tolerance, per mode: what calibrates the tolerance table); float32 agreement
at hidden 2048 and length 100; agreement after set_weights for every implementation; CuPy fed from a busy
side stream; the timed smoke grid; a few points at the Caffe LSTM's shapes (hidden 2048), timed; the report.
"""

from __future__ import annotations

import json
import os
import re
import signal
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
# Implementations kept out of the shared steps, each checked in a step of its own at the end, with its own cap:
# flashrnn_cuda compiles its kernels with nvcc at first use, once per configuration, with sleeps and retries
# inside FlashRNN, and needs an unversioned libcublas.so; it must not eat the other steps' time.
OWN_STEP = ("flashrnn_cuda",)
STOP_GRACE_SECONDS = 5  # between asking a step's process group to stop (SIGTERM) and killing it
SMALLEST_CAP = 5  # a step with less time than this left is skipped, not started
# The caps are estimates on an H200; the CPU run (what tests the check itself where there is no GPU, on 2 cores
# that may be busy) gets this many times as long. The budget bounds both.
CPU_CAP_FACTOR = 3


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
    impls: str | None = None  # --impls: only these implementations (default: every registered one)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def impl_option(self) -> list[str]:
        """The implementations of the shared steps: --impls as given, else every one but those with steps of
        their own (OWN_STEP)."""
        return ["--lstm-impls", self.impls] if self.impls else ["--lstm-skip-impls", ",".join(OWN_STEP)]


@dataclass(frozen=True)
class Step:
    """One step: `command(check)` gives the arguments of `python` (or raises Skip), run from the checkout."""

    name: str
    cap: float  # the most seconds it may take, whatever is left of the budget
    command: Callable[[Check], list[str]]
    cuda: str | None = None  # what needs a GPU, when the step does
    describe: Callable[[str], str] | None = None  # its log -> the detail of an ok step (default: the last line)

    def run(self, check: Check) -> tuple[str, str]:
        """(status, detail): the command's last line when it succeeds."""
        log = check.out / f"{self.name}.log"
        # What the step may take: its cap, or what is left of the budget less the time a stop may take.
        own = self.cap * (1 if check.device == "cuda" else CPU_CAP_FACTOR)
        cap = min(own, check.remaining() - STOP_GRACE_SECONDS)
        try:
            if self.cuda and check.device != "cuda":
                raise Skip(f"{self.cuda} needs a CUDA device; none is visible here")
            if cap < SMALLEST_CAP:
                raise Skip("the time budget is spent")
            args = self.command(check)
        except Skip as exc:
            log.write_text(f"[gpu-check] skipped: {exc}\n")  # every step leaves a log, a skipped one too
            return SKIP, str(exc)
        env = _child_env(check) | ({SET_WEIGHTS_IMPLS: check.impls} if check.impls else {})
        code = run_in_group([sys.executable, *args], log, cap, env)
        last = _last_line(log)
        if code is None:
            return "failed", f"stopped at its cap of {cap:.0f} s (partial log: {log.name}): {last}"
        if code != 0:
            return "failed", f"exit status {code}: {last}"
        if ALL_SKIPPED.search(last):  # a pytest run that ran nothing: say why, not ok
            return SKIP, _skip_reason(log) or last
        return "ok", self.describe(log.read_text(errors="replace")) if self.describe else last


def run_in_group(argv: list[str], log: Path, cap: float, env: dict) -> int | None:
    """Run argv in a new process group, its output straight into `log`; at `cap` seconds stop the whole group
    (SIGTERM, then SIGKILL after STOP_GRACE_SECONDS). The exit status, or None when it was stopped."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            return proc.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            out.write(f"\n[gpu-check] stopped at its cap of {cap:.0f} s\n".encode())
            return None
        finally:
            if proc.poll() is None:  # interrupted (Ctrl-C): leave nothing of ours running
                stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, STOP_GRACE_SECONDS)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; children it left in the group may not be: one more signal for them.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


ALL_SKIPPED = re.compile(r"^=*\s*\d+ skipped(, [0-9]+ (deselected|warnings?))* in [0-9.]+s|no tests ran")
SET_WEIGHTS_IMPLS = "LSTM_HARNESS_SET_WEIGHTS_IMPLS"  # tests/test_set_weights.py's --impls


def _skip_reason(log: Path) -> str | None:
    """The first reason of pytest's -rs lines ('SKIPPED [1] file:line: reason')."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("SKIPPED"):
            return line.split(": ", 1)[-1][:300]
    return None


def _last_line(log: Path) -> str:
    """The step's own last line (not the check's marker of a stop)."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines()
                 if line.strip() and not line.startswith("[gpu-check]")]
    except OSError:
        return "(no log)"
    return (lines[-1] if lines else "(no output)")[:300]


def pytest_args(check: Check, *args: str, harness_options: bool = True) -> list[str]:
    """`python -m pytest` with the two plugins named explicitly (installed or not, the same two)."""
    return ["-m", "pytest", "-p", "harness.measuring.pytest_plugin", "-p", "pytest_benchmark.plugin",
            "-p", "no:cacheprovider", "-q", "-rs",
            *(["--lstm-device", check.device, *check.impl_option()] if harness_options else []), *args]


def versions(check: Check) -> list[str]:
    return ["-m", "harness.measuring.environment", "--device", check.device]


def listing(check: Check) -> list[str]:
    return ["-m", "harness", "list", "--device", check.device]


def listed(text: str) -> str:
    rows = [line for line in text.splitlines()[2:] if line.strip()]  # below the header and its rule
    runs = sum(" yes" in line for line in rows)
    return f"{len(rows)} implementation(s) listed, {runs} of them can run here"


def agreement(check: Check) -> list[str]:
    return pytest_args(check, "suites/test_agreement.py", "--lstm-grid", "smoke", "--lstm-dtype", MODES[check.device])


def agreement_at_scale(check: Check) -> list[str]:
    """float32 agreement where it was never measured: hidden 2048 (the Caffe LSTM's width), length 100."""
    return pytest_args(check, "suites/test_agreement.py", "--lstm-grid", "caffe", "--lstm-batch", "20",
                       "--lstm-length", "100", "--lstm-dtype", "float32")


def set_weights(check: Check) -> list[str]:
    # tests/test_set_weights.py: the problems on this device only (its ids end in the device); --impls by exact
    # name through its variable (a -k expression matches substrings).
    skip = "" if check.impls else "".join(f" and not {name}" for name in OWN_STEP)
    return pytest_args(check, "tests/test_set_weights.py", "-k", f"new_weights and {check.device}{skip}",
                       harness_options=False)


def cupy_side_stream(check: Check) -> list[str]:
    return pytest_args(check, "tests/test_cupy_side_stream.py", harness_options=False)


def smoke(check: Check) -> list[str]:
    return pytest_args(check, "suites/test_speed.py", "--benchmark-only", "--lstm-grid", "smoke",
                       "--lstm-max-time", str(check.max_time), "--benchmark-json", str(check.out / "smoke.json"),
                       f"--benchmark-storage=file://{check.out / 'benchmarks'}")


def caffe_points(check: Check) -> list[str]:
    return pytest_args(check, "suites/test_speed.py", "--benchmark-only", "--lstm-grid", "caffe",
                       "--lstm-length", "20", "--lstm-max-time", str(check.max_time),
                       "--benchmark-json", str(check.out / "caffe.json"),
                       f"--benchmark-storage=file://{check.out / 'benchmarks'}")


def flashrnn_cuda(check: Check) -> list[str]:
    if check.impls and "flashrnn_cuda" not in check.impls.split(","):
        raise Skip("not among --impls")
    return pytest_args(check, "suites/test_agreement.py", "--lstm-grid", "smoke", "--lstm-dtype", "float32",
                       harness_options=False) + ["--lstm-device", check.device, "--lstm-impls", "flashrnn_cuda"]


def report(check: Check) -> list[str]:
    files = [str(p) for p in (check.out / "smoke.json", check.out / "caffe.json") if p.exists()]
    if not files:
        raise Skip("no timed run wrote results")
    return ["-m", "harness", "report", *files, "--out-dir", str(check.out), "--name", "gpu-check",
            "--baseline", "cudnn", *([] if check.plots else ["--no-plots"])]


# Caps estimated on an H200: versions and list seconds, agreement and the Caffe LSTM points a minute or two (the
# float64 references), smoke about a minute. One hung step must leave time for the others.
STEPS = [
    Step("versions", 60, versions), Step("list", 90, listing, describe=listed), Step("agreement", 180, agreement),
    Step("agreement_h2048", 150, agreement_at_scale, cuda="agreement at hidden 2048, length 100"),
    Step("set_weights", 120, set_weights), Step("cupy_side_stream", 90, cupy_side_stream, cuda="the CuPy stream check"),
    Step("smoke", 150, smoke), Step("caffe_points", 180, caffe_points, cuda="hidden 2048 (the Caffe LSTM's shape)"),
    Step("flashrnn_cuda", 240, flashrnn_cuda, cuda="flashrnn_cuda (nvcc at first use)"),
    Step("report", 90, report),
]


def run_steps(check: Check, steps=STEPS) -> list[dict]:
    for step in steps:
        started = time.monotonic()
        status, detail = step.run(check)
        _record(check, step.name, status, detail, time.monotonic() - started)
    return check.results


def _record(check: Check, name: str, status: str, detail: str, seconds: float) -> None:
    result = {"step": name, "status": status, "seconds": round(seconds, 1), "detail": detail}
    check.results.append(result)
    print(f"[{status:>7}] {name} ({result['seconds']} s): {detail}", flush=True)
    # After every step: a run stopped from outside still leaves what it found.
    (check.out / "summary.json").write_text(json.dumps(check.results, indent=1) + "\n")


def _child_env(check: Check) -> dict:
    # CuPy compiles its kernels into a cache under $HOME by default; the lent machine's may not be writable.
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                CUPY_CACHE_DIR=os.environ.get("CUPY_CACHE_DIR", str(check.out / "cupy-cache")),
                PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
                PYTHONUNBUFFERED="1")  # the log in the order written, and whole up to a stop at the cap


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
    options.add_no_plots(parser, help="report without figures")
    options.add_impl(parser, default=None, help="only these implementations, comma-separated (default: every one)")


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
    print(f"GPU check on {device}, everything under {args.out}", flush=True)
    started = time.monotonic()
    run_steps(check)
    text = summary(check)
    calibration = calibration_section(args.out / "agreement.log")
    (args.out / "summary.md").write_text(
        f"# GPU check on {device}\n\n{len(check.results)} steps in {time.monotonic() - started:.0f} s of a "
        f"{args.budget:.0f} s budget\n\n{text}\n" + (f"\n## Agreement errors beside their tolerances (the agreement "
                                                    f"step)\n\n```\n{calibration}\n```\n" if calibration else ""))
    archive = write_archive(args.out)
    print("\n" + text + f"\n\nsummary: {args.out / 'summary.md'}; everything in one file: {archive}")
    return 1 if any(r["status"] == "failed" for r in check.results) else 0


CALIBRATION_HEADING = "agreement errors beside their tolerances"
ARCHIVE = "gpu-check.tar.gz"


def calibration_section(log: Path) -> str:
    """The table the harness's pytest plugin prints at the end of a run (harness.measuring.calibration)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    start = next((i for i, line in enumerate(lines) if CALIBRATION_HEADING in line), None)
    if start is None:
        return ""
    table = []
    for line in lines[start + 1:]:
        if line.startswith(("=", "-" * 5 + " ")) or not line.strip():
            break
        table.append(line)
    return "\n".join(table)


def write_archive(out: Path) -> Path:
    """Every log, results file, report and figure of the check in one gzipped tar beside them (the CuPy kernel
    cache and pytest-benchmark's own copies left out), so the whole check comes back as one file."""
    import tarfile

    archive = out / ARCHIVE
    skip = {ARCHIVE, "cupy-cache", "benchmarks"}
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(out.iterdir()):
            if path.name not in skip:
                tar.add(path, arcname=f"gpu-check/{path.name}")
    return archive
