"""What else the machine was doing while rounds ran, read outside every timed region.

CPU: the CPU time other processes used, as `/proc/stat`'s busy time of all CPUs minus this
process's own CPU time (all its threads), plus the VM's steal time, both per second of wall
time: cores taken from us. `/proc/stat` counts in clock ticks (10 ms of CPU time at the usual
USER_HZ of 100), so one reading means little over a short stretch; the round runner
(harness.measuring.rounds) therefore judges blocks of rounds of at least 100 ms, and judges
conservatively: a block is disturbed only when its reading, less the counters' resolution, is over
the threshold.

CUDA, where NVML is importable (nvidia-ml-py's `pynvml`): the SM clock, the throttle reasons
that slow a GPU down (power, thermal, hardware slowdown) and compute processes other than this one
on the device; any of the last two disturbs a block.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PROC_STAT = Path("/proc/stat")
# /proc/stat's aggregate "cpu" line: user nice system idle iowait irq softirq steal guest guest_nice.
# guest time is already inside user; idle and iowait are no one's work.
BUSY_FIELDS = (0, 1, 2, 5, 6)
STEAL_FIELD = 7
# Cores used by others during a block that make it disturbed. On two cores, with the timed code using both,
# a tenth of a core taken at the wrong moment already stalls a parallel region (measured: rounds overlapping a
# burst of another process by a fraction of their length read 0.1 to 0.3 cores and ran slow).
DEFAULT_THRESHOLD = 0.1
# A block lasts at least this many counter steps of /proc/stat: at 10, an error of one step is 0.1 cores.
STEPS_PER_BLOCK = 10


def clock_tick() -> float:
    """Seconds of CPU time per /proc/stat counter step."""
    try:
        return 1.0 / os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 0.01


@dataclass(frozen=True)
class CpuSample:
    wall: float  # perf_counter
    busy: float  # seconds of CPU time, all CPUs, everyone
    steal: float  # seconds the hypervisor ran something else on our virtual CPUs
    own: float  # seconds of CPU time of this process, all threads


@dataclass(frozen=True)
class Reading:
    """What others did during one stretch of time."""

    wall: float  # seconds
    others: float  # seconds of CPU time others used (steal included)
    steal: float  # of which steal
    quantum: float  # the counters' resolution in CPU seconds: others is exact to about this
    gpu: tuple[str, ...] = ()  # what NVML saw that disturbs a GPU timing

    @property
    def cores(self) -> float:
        """Cores other processes (and the hypervisor) used, on average over the stretch."""
        return max(0.0, self.others) / self.wall if self.wall > 0 else 0.0

    @property
    def cores_at_least(self) -> float:
        """The least the counters allow: one counter step less than read."""
        return max(0.0, self.others - self.quantum) / self.wall if self.wall > 0 else 0.0

    def disturbed(self, threshold: float) -> bool:
        return self.cores_at_least > threshold or bool(self.gpu)

    def why(self) -> str:
        parts = [f"{self.cores:.2f} cores used by others" + (f" ({self.steal / self.wall:.2f} of them steal)"
                                                              if self.steal > 0 and self.wall > 0 else "")]
        return "; ".join(parts + list(self.gpu))


class CpuMonitor:
    """Samples /proc/stat and this process's CPU time. `available` is False where there is no /proc/stat
    (not Linux): then nothing is judged disturbed, and the results say interference was not measured."""

    def __init__(self, proc_stat: Path = PROC_STAT, own: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.perf_counter, tick: float | None = None) -> None:
        self.proc_stat, self.own, self.clock = Path(proc_stat), own, clock
        self.tick = clock_tick() if tick is None else tick
        self.available = self._counters() is not None

    def _counters(self) -> tuple[float, float] | None:
        try:
            with open(self.proc_stat, "rb") as f:
                first = f.readline().split()
        except OSError:
            return None
        if not first or first[0] != b"cpu" or len(first) < 5:
            return None
        try:
            values = [int(v) for v in first[1:]]
        except ValueError:
            return None
        busy = sum(values[i] for i in BUSY_FIELDS if i < len(values))
        steal = values[STEAL_FIELD] if len(values) > STEAL_FIELD else 0
        return busy * self.tick, steal * self.tick

    def sample(self) -> CpuSample | None:
        counters = self._counters()
        if counters is None:
            return None
        return CpuSample(self.clock(), counters[0], counters[1], self.own())

    @property
    def quantum(self) -> float:
        """The counters' resolution in CPU seconds: busy time is floored to a tick (own time is exact); steal,
        floored too, adds a tick more where the hypervisor steals at all (between() counts it then)."""
        return self.tick

    @property
    def min_block(self) -> float:
        """Wall seconds a judged block must last to resolve a fraction of a core (see STEPS_PER_BLOCK)."""
        return STEPS_PER_BLOCK * self.quantum


def between(a: CpuSample, b: CpuSample, quantum: float) -> Reading:
    steal = max(0.0, b.steal - a.steal)
    others = (b.busy - a.busy) - (b.own - a.own) + steal
    return Reading(wall=b.wall - a.wall, others=others, steal=steal, quantum=quantum * (2 if steal > 0 else 1))


# NVML throttle reasons that slow the GPU for reasons not ours: software power cap, hardware slowdown,
# sync boost, software and hardware thermal slowdown, power brake. Idle (0x1) and the application clock
# setting (0x2) are not.
GPU_SLOWDOWN = {0x4: "power cap", 0x8: "hardware slowdown", 0x10: "sync boost", 0x20: "software thermal slowdown",
                0x40: "hardware thermal slowdown", 0x80: "power brake slowdown"}


@dataclass
class GpuMonitor:
    """NVML's view of one CUDA device; `available` False without pynvml or NVML."""

    index: int = 0
    nvml: object = None
    handle: object = None
    available: bool = False
    own_pid: int = field(default_factory=os.getpid)

    @classmethod
    def open(cls, index: int = 0, nvml=None) -> GpuMonitor:
        try:
            if nvml is None:
                import pynvml as nvml  # nvidia-ml-py; torch.cuda uses the same module where present
            nvml.nvmlInit()
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:  # noqa: BLE001 - no pynvml, no driver, no such device: not measured
            return cls(index)
        return cls(index, nvml, handle, True)

    def sample(self) -> dict:
        if not self.available:
            return {}
        n, h = self.nvml, self.handle
        out = {}
        try:
            out["sm_clock_mhz"] = n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)
            out["throttle"] = int(n.nvmlDeviceGetCurrentClocksThrottleReasons(h))
            out["others"] = sorted({p.pid for p in n.nvmlDeviceGetComputeRunningProcesses(h)} - {self.own_pid})
        except Exception as exc:  # noqa: BLE001 - a query this driver lacks: say so once, judge on the rest
            out["error"] = f"{type(exc).__name__}: {exc}"
        return out


def gpu_disturbances(start: dict, end: dict) -> tuple[str, ...]:
    """What in two NVML samples (a block's start and end) makes the block's GPU timing not the GPU's own."""
    found = []
    reasons = (start.get("throttle") or 0) | (end.get("throttle") or 0)
    found += [f"GPU throttled: {name}" for bit, name in GPU_SLOWDOWN.items() if reasons & bit]
    others = sorted(set(start.get("others") or ()) | set(end.get("others") or ()))
    if others:
        found.append(f"other processes on the GPU: {', '.join(map(str, others))}")
    return tuple(found)


class Interference:
    """Both monitors of a run: `start()` before a block, `stop(token)` after it gives its Reading."""

    def __init__(self, cpu: CpuMonitor | None = None, gpu: GpuMonitor | None = None) -> None:
        self.cpu = cpu if cpu is not None else CpuMonitor()
        self.gpu = gpu

    @classmethod
    def for_device(cls, device: str) -> Interference:
        gpu = None
        if device == "cuda":
            import torch

            gpu = GpuMonitor.open(torch.cuda.current_device())
        return cls(CpuMonitor(), gpu)

    @property
    def available(self) -> bool:
        return self.cpu.available

    @property
    def min_block(self) -> float:
        return self.cpu.min_block if self.cpu.available else 0.0

    def start(self) -> tuple:
        return self.cpu.sample(), (self.gpu.sample() if self.gpu is not None else {})

    def stop(self, token: tuple) -> Reading | None:
        cpu_start, gpu_start = token
        cpu_end = self.cpu.sample()
        if cpu_start is None or cpu_end is None:
            return None
        reading = between(cpu_start, cpu_end, self.cpu.quantum)
        if self.gpu is not None and self.gpu.available:
            reading = Reading(reading.wall, reading.others, reading.steal, reading.quantum,
                              gpu_disturbances(gpu_start, self.gpu.sample()))
        return reading

    def describe(self) -> str:
        """How interference was measured, for the results file."""
        if not self.cpu.available:
            return "not measured (no /proc/stat)"
        how = (f"/proc/stat busy and steal time of all CPUs minus this process's CPU time, per block of rounds "
               f"of at least {self.min_block * 1e3:.0f} ms")
        if self.gpu is not None:
            how += "; NVML: throttle reasons and other processes on the GPU" if self.gpu.available else \
                "; the GPU's clocks not measured (no NVML)"
        return how
