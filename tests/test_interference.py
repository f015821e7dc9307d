import os
import subprocess
import sys
import time
import types

import pytest

from harness.measuring.interference import (
    DEFAULT_THRESHOLD,
    PROC_STAT,
    STEPS_PER_BLOCK,
    CpuMonitor,
    GpuMonitor,
    Interference,
    Reading,
    between,
    gpu_disturbances,
)

TICK = 0.01  # seconds of CPU time per /proc/stat step, as at USER_HZ 100
FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")


class FakeMachine:
    """A /proc/stat file under tmp_path with counters that tests advance, and this process's CPU time and the
    wall clock as the monitor's `own` and `clock`."""

    def __init__(self, path):
        self.path = path
        self.ticks = dict.fromkeys(FIELDS, 0)
        self.ticks["idle"] = 1000
        self.own_seconds, self.now = 0.0, 100.0
        self.write()

    def write(self):
        self.path.write_text("cpu  " + " ".join(str(self.ticks[f]) for f in FIELDS) + "\n"
                             "cpu0 " + " ".join("0" for _ in FIELDS) + "\nintr 0\n")

    def advance(self, wall=0.0, own=0.0, **ticks):
        for name, n in ticks.items():
            self.ticks[name] += n
        self.own_seconds += own
        self.now += wall
        self.write()

    def monitor(self):
        return CpuMonitor(self.path, own=lambda: self.own_seconds, clock=lambda: self.now, tick=TICK)


@pytest.fixture
def machine(tmp_path):
    return FakeMachine(tmp_path / "stat")


def test_cores_used_by_others_are_all_busy_time_less_our_own(machine):
    """150 ticks of busy time over 1 s of wall, of which 0.5 s were ours: others used one core."""
    cpu = machine.monitor()
    assert cpu.available
    a = cpu.sample()
    machine.advance(wall=1.0, own=0.5, user=100, system=50, idle=50)
    b = cpu.sample()
    reading = between(a, b, cpu.quantum)
    assert reading.wall == pytest.approx(1.0)
    assert reading.others == pytest.approx(1.0)
    assert reading.steal == 0
    assert reading.cores == pytest.approx(1.0)
    assert reading.cores_at_least == pytest.approx(1.0 - cpu.quantum)
    assert "1.00 cores used by others" in reading.why() and "steal" not in reading.why()


@pytest.mark.parametrize("field,counted", [
    ("user", True), ("nice", True), ("system", True), ("irq", True), ("softirq", True),
    # idle and iowait are no one's work; guest time is already inside user; steal is counted apart
    ("idle", False), ("iowait", False), ("guest", False), ("guest_nice", False),
])
def test_which_counters_are_busy_time(machine, field, counted):
    """Each busy field of the aggregate cpu line counts as work; idle, iowait and guest (inside user) do not."""
    cpu = machine.monitor()
    a = cpu.sample()
    machine.advance(wall=2.0, **{field: 100})
    reading = between(a, cpu.sample(), cpu.quantum)
    assert reading.cores == pytest.approx(0.5 if counted else 0.0)


def test_steal_is_added_and_reported(machine):
    """Time the hypervisor gave our virtual CPUs to someone else is taken from us: it counts among others."""
    cpu = machine.monitor()
    a = cpu.sample()
    machine.advance(wall=1.0, own=0.2, user=40, steal=30)
    reading = between(a, cpu.sample(), cpu.quantum)
    assert reading.steal == pytest.approx(0.3)
    assert reading.others == pytest.approx(0.4 - 0.2 + 0.3)
    assert reading.cores == pytest.approx(0.5)
    assert "0.30 of them steal" in reading.why()


def test_a_quiet_reading_is_not_disturbed_a_busy_one_is(machine):
    """Others within one counter quantum is quiet; a full core used by others disturbs at the default 0.1."""
    cpu = machine.monitor()
    assert cpu.quantum == pytest.approx(TICK)
    a = cpu.sample()
    # our own 1 s of work shows in the busy counters, floored: others read 0.01 s, one quantum
    machine.advance(wall=1.0, own=0.99, user=100)
    quiet = between(a, cpu.sample(), cpu.quantum)
    assert quiet.others == pytest.approx(0.01)
    assert quiet.cores_at_least == pytest.approx(0.0, abs=1e-9)
    assert not quiet.disturbed(DEFAULT_THRESHOLD)

    a = cpu.sample()
    machine.advance(wall=1.0, own=1.0, user=200)
    busy = between(a, cpu.sample(), cpu.quantum)
    assert busy.cores == pytest.approx(1.0)
    assert busy.disturbed(DEFAULT_THRESHOLD)


def test_judging_is_conservative_by_one_quantum(machine):
    """Just over the threshold as read, but not once one counter step is allowed for: not disturbed. Where the
    hypervisor steals, its floored counter adds a step more."""
    cpu = machine.monitor()
    a = cpu.sample()
    machine.advance(wall=1.0, user=31)
    reading = between(a, cpu.sample(), cpu.quantum)
    assert reading.cores == pytest.approx(0.31)
    assert reading.cores_at_least == pytest.approx(0.30)
    assert not reading.disturbed(0.3) and reading.disturbed(0.29)
    a = cpu.sample()
    machine.advance(wall=1.0, user=21, steal=10)
    stolen = between(a, cpu.sample(), cpu.quantum)
    assert stolen.cores == pytest.approx(0.31) and stolen.cores_at_least == pytest.approx(0.29)


def test_own_time_beyond_the_floored_counters_is_not_negative_cores(machine):
    """The counters are floored and our own time is exact, so others can read below zero: that is no one."""
    cpu = machine.monitor()
    a = cpu.sample()
    machine.advance(wall=1.0, own=0.505, user=50)
    reading = between(a, cpu.sample(), cpu.quantum)
    assert reading.others < 0
    assert reading.cores == 0.0 and reading.cores_at_least == 0.0
    assert not reading.disturbed(0.0)


def test_zero_wall_time_reads_no_cores():
    reading = Reading(wall=0.0, others=1.0, steal=0.0, quantum=0.02)
    assert reading.cores == 0.0 and reading.cores_at_least == 0.0


def test_min_block_resolves_a_fraction_of_a_core(machine):
    cpu = machine.monitor()
    assert cpu.min_block == pytest.approx(STEPS_PER_BLOCK * cpu.quantum)
    assert Interference(cpu).min_block == cpu.min_block


def test_interference_start_stop_reads_the_block(machine):
    """start() before a block and stop(token) after it give the reading of the stretch between them."""
    interference = Interference(machine.monitor())
    assert interference.available
    token = interference.start()
    machine.advance(wall=0.5, own=0.25, user=75)
    reading = interference.stop(token)
    assert reading.wall == pytest.approx(0.5)
    assert reading.cores == pytest.approx(1.0)
    assert reading.gpu == ()
    assert "/proc/stat" in interference.describe()


def test_missing_proc_stat_is_not_measured(tmp_path):
    """No /proc/stat (not Linux): not available, no samples, no readings, blocks of any length."""
    cpu = CpuMonitor(tmp_path / "absent", own=lambda: 0.0, clock=lambda: 0.0, tick=TICK)
    assert cpu.available is False
    assert cpu.sample() is None
    interference = Interference(cpu)
    assert not interference.available
    assert interference.min_block == 0.0
    assert interference.stop(interference.start()) is None
    assert interference.describe().startswith("not measured")


@pytest.mark.parametrize("text", [
    "",
    "\n",
    "intr 1 2 3 4 5 6 7 8\n",
    "cpu0 1 2 3 4 5 6 7 8\n",
    "cpu 1 2 3\n",
])
def test_malformed_first_line_is_not_measured(tmp_path, text):
    path = tmp_path / "stat"
    path.write_text(text)
    cpu = CpuMonitor(path, own=lambda: 0.0, clock=lambda: 0.0, tick=TICK)
    assert cpu.available is False
    assert cpu.sample() is None
    assert Interference(cpu).stop((None, {})) is None


def test_non_numeric_first_line_is_not_measured(tmp_path):
    path = tmp_path / "stat"
    path.write_text("cpu  1 2 x 4 5 6 7 8 9 10\n")
    cpu = CpuMonitor(path, own=lambda: 0.0, clock=lambda: 0.0, tick=TICK)
    assert cpu.available is False
    assert cpu.sample() is None


def test_a_file_that_goes_away_stops_the_readings(machine):
    """A sample that cannot be read makes that block's reading None rather than a made-up one."""
    interference = Interference(machine.monitor())
    token = interference.start()
    machine.path.unlink()
    assert interference.stop(token) is None


# --- GPU --------------------------------------------------------------------------------------------------------


def test_gpu_slowdowns_and_other_processes_disturb():
    """Throttle bits at either end of the block, and other processes at either end, each give a reason."""
    assert gpu_disturbances({"throttle": 0x40}, {"throttle": 0}) == ("GPU throttled: hardware thermal slowdown",)
    assert gpu_disturbances({"throttle": 0}, {"throttle": 0x4 | 0x1}) == ("GPU throttled: power cap",)
    found = gpu_disturbances({"throttle": 0x8, "others": [4242]}, {"throttle": 0x20, "others": [17, 4242]})
    assert found == ("GPU throttled: hardware slowdown", "GPU throttled: software thermal slowdown",
                     "other processes on the GPU: 17, 4242")


@pytest.mark.parametrize("start,end", [
    ({"throttle": 0x1}, {"throttle": 0x1}),  # idle
    ({"throttle": 0x2}, {"throttle": 0x1 | 0x2}),  # application clocks setting
    ({"throttle": 0, "others": []}, {"throttle": 0, "others": []}),
    ({}, {}),  # GPU not measured
    ({"error": "NVMLError: Not Supported"}, {"error": "NVMLError: Not Supported"}),
])
def test_idle_and_clock_settings_do_not_disturb(start, end):
    assert gpu_disturbances(start, end) == ()


def fake_nvml(pids=(), throttle=0x1, sm_clock=1980, init=None):
    calls = []

    def get_handle(index):
        calls.append(("handle", index))
        return f"device{index}"

    def clock_info(handle, kind):
        calls.append(("clock", handle, kind))
        return sm_clock

    def throttle_reasons(handle):
        return throttle

    def processes(handle):
        return [types.SimpleNamespace(pid=p, usedGpuMemory=0) for p in pids]

    def nvml_init():
        calls.append(("init",))
        if init is not None:
            raise init

    return types.SimpleNamespace(
        nvmlInit=nvml_init, nvmlDeviceGetHandleByIndex=get_handle, nvmlDeviceGetClockInfo=clock_info,
        NVML_CLOCK_SM=1, nvmlDeviceGetCurrentClocksThrottleReasons=throttle_reasons,
        nvmlDeviceGetComputeRunningProcesses=processes, calls=calls)


def test_gpu_monitor_samples_clock_throttle_and_other_processes():
    """Our own process on the device is not another process."""
    nvml = fake_nvml(pids=(os.getpid(), 4242, 17, 4242), throttle=0x40, sm_clock=1500)
    gpu = GpuMonitor.open(2, nvml=nvml)
    assert gpu.available and gpu.index == 2
    assert ("handle", 2) in nvml.calls
    sample = gpu.sample()
    assert sample == {"sm_clock_mhz": 1500, "throttle": 0x40, "others": [17, 4242]}
    assert ("clock", "device2", nvml.NVML_CLOCK_SM) in nvml.calls


def test_gpu_monitor_alone_on_the_device_sees_no_others():
    gpu = GpuMonitor.open(0, nvml=fake_nvml(pids=(os.getpid(),)))
    sample = gpu.sample()
    assert sample["others"] == []
    assert gpu_disturbances(sample, gpu.sample()) == ()


def test_gpu_monitor_without_nvml_is_not_available():
    gpu = GpuMonitor.open(0, nvml=fake_nvml(init=RuntimeError("NVML Shared Library Not Found")))
    assert gpu.available is False
    assert gpu.sample() == {}


def test_gpu_query_the_driver_lacks_is_said_not_raised():
    nvml = fake_nvml()

    def unsupported(handle):
        raise RuntimeError("Not Supported")

    nvml.nvmlDeviceGetComputeRunningProcesses = unsupported
    sample = GpuMonitor.open(0, nvml=nvml).sample()
    assert sample["error"] == "RuntimeError: Not Supported"
    assert sample["throttle"] == 0x1


def test_interference_reading_carries_the_gpus_disturbances(machine):
    """A block quiet on the CPU is still disturbed when the GPU throttled or was shared during it."""
    gpu = GpuMonitor.open(0, nvml=fake_nvml(pids=(os.getpid(), 4242), throttle=0x1))
    interference = Interference(machine.monitor(), gpu)
    token = interference.start()
    machine.advance(wall=1.0)
    reading = interference.stop(token)
    assert reading.cores == 0.0
    assert reading.gpu == ("other processes on the GPU: 4242",)
    assert reading.disturbed(0.3)
    assert "other processes on the GPU: 4242" in reading.why()
    assert "NVML" in interference.describe()


def test_interference_with_an_unavailable_gpu_judges_the_cpu_only(machine):
    gpu = GpuMonitor.open(0, nvml=fake_nvml(init=RuntimeError("no driver")))
    interference = Interference(machine.monitor(), gpu)
    token = interference.start()
    machine.advance(wall=1.0)
    reading = interference.stop(token)
    assert reading.gpu == () and not reading.disturbed(0.3)
    assert "not measured (no NVML)" in interference.describe()


# --- the real /proc/stat ----------------------------------------------------------------------------------------

SPIN = "import time\nprint('spinning', flush=True)\nend=time.time()+3\nwhile time.time()<end: pass"


def spin_here(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


real_proc_stat = pytest.mark.skipif(not PROC_STAT.exists(), reason="no /proc/stat (not Linux)")


@real_proc_stat
def test_real_counters_see_a_busy_process_beside_us():
    """A process spinning while we sleep is someone else's core: at least half a core (others on the shared
    machine only add to it), and the block is disturbed."""
    cpu = CpuMonitor()
    assert cpu.available
    child = subprocess.Popen([sys.executable, "-c", SPIN], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "spinning"
        a = cpu.sample()
        time.sleep(1.0)
        b = cpu.sample()
        assert child.poll() is None, "the busy process ended before the second sample"
    finally:
        child.kill()
        child.wait()
    theirs = between(a, b, cpu.quantum)
    assert theirs.cores >= 0.5, theirs.why()
    assert theirs.disturbed(0.3)


@real_proc_stat
def test_real_counters_do_not_count_this_process():
    """This process spinning is not someone else's core. The machine is shared, so each spinning stretch is
    compared with a sleeping one just before it: were our own time counted, every spinning stretch would read
    about a core more than its neighbour; the least difference of three must be well under that."""
    cpu = CpuMonitor()
    differences, own_shares = [], []
    for _ in range(3):
        a = cpu.sample()
        time.sleep(0.3)
        b = cpu.sample()
        asleep = between(a, b, cpu.quantum)
        a = cpu.sample()
        spin_here(0.3)
        b = cpu.sample()
        spinning = between(a, b, cpu.quantum)
        # our spinning shows in the machine's busy counters, on the scale of our own CPU time
        assert b.busy - a.busy >= (b.own - a.own) - cpu.quantum
        differences.append(spinning.cores - asleep.cores)
        own_shares.append((b.own - a.own) / spinning.wall)
    if max(own_shares) < 0.7:
        pytest.skip(f"this process got at most {max(own_shares):.2f} of a core: the machine is too loaded to tell")
    assert min(differences) < 0.5, (differences, own_shares)
