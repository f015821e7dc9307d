import itertools
import statistics

import pytest

from harness.measuring.interference import Reading
from harness.measuring.rounds import Contestant, Dropped, RoundPolicy, run_rounds

WALL = 0.25  # seconds each fake block reads


class FakeInterference:
    """Scripted readings: `cores[k]` for the k-th block (then `rest`); quantum 0, so a block is disturbed
    exactly when its cores are over the threshold. `cores` may also be a function of the block number."""

    available = True

    def __init__(self, cores=(), rest=0.0, min_block=0.0):
        self.cores, self.rest, self.min_block = cores, rest, min_block
        self.blocks = 0
        self.open = None

    def start(self):
        assert self.open is None, "a block started inside another"
        self.open = self.blocks
        return self.blocks

    def stop(self, token):
        assert token == self.open
        self.open = None
        self.blocks += 1
        if callable(self.cores):
            cores = self.cores(token)
        else:
            cores = self.cores[token] if token < len(self.cores) else self.rest
        return Reading(wall=WALL, others=cores * WALL, steal=0.0, quantum=0.0)


def contestant(name, planned, log, after_round=None, fail_at=None, clock=None):
    """A contestant whose calls append its name to `log`; its call number `fail_at` raises ValueError.
    With `clock` (a one-element list), each call takes one second of it."""
    calls = itertools.count()

    def target(who):
        n = next(calls)
        log.append(who)
        if clock is not None:
            clock[0] += 1.0
        if n == fail_at:
            raise ValueError(f"{who} broke")

    return Contestant(name, setup=lambda: ((name,), {}), target=target, planned=planned, after_round=after_round)


def drop_at(call, log, name, reason="changed state"):
    """An after_round check that drops its contestant after its call number `call`."""

    def check():
        if log.count(name) == call + 1:
            raise Dropped(reason)

    return check


def ticking_timer():
    """Every timed call lasts one second."""
    t = itertools.count()
    return lambda: float(next(t))


def test_quiet_run_keeps_exactly_the_planned_rounds_after_the_warmup():
    log = []
    c = contestant("a", 5, log)
    interference = FakeInterference()
    readings = run_rounds([c], warmup=2, interference=interference, timer=ticking_timer())
    assert c.calls == 7 and len(log) == 7
    assert c.kept == [1.0] * 5
    assert c.kept_calls == [2, 3, 4, 5, 6]  # the warm-up calls are 0 and 1
    assert c.disturbed == c.redone == c.kept_disturbed == 0
    assert not c.flagged and c.redo_seconds == 0.0
    assert c.dropped is None and c.error is None
    assert len(readings) == interference.blocks == 5  # min_block 0: a block is one round
    assert c.interference_cores == 0.0


def test_blocks_last_at_least_min_block():
    """With rounds of one (fake) second and min_block 3 s, seven rounds are judged as blocks of 3, 3 and 1."""
    now, log = [0.0], []
    c = contestant("a", 7, log, clock=now)
    interference = FakeInterference(cores=[0.0, 0.0, 0.0], min_block=3.0)
    readings = run_rounds([c], warmup=0, interference=interference, clock=lambda: now[0])
    assert len(readings) == 3
    assert len(c.kept) == 7 and c.kept_calls == list(range(7))


def test_a_disturbed_block_is_redone():
    log = []
    c = contestant("a", 4, log)
    interference = FakeInterference(cores=[0.0, 1.0])  # the second block: a core used by others
    readings = run_rounds([c], warmup=0, interference=interference, policy=RoundPolicy(threshold=0.3))
    assert len(readings) == 5 and c.calls == 5
    assert len(c.kept) == 4
    assert c.kept_calls == [0, 2, 3, 4]  # call 1 ran in the disturbed block
    assert c.disturbed == 1 and c.redone == 1
    assert c.kept_disturbed == 0 and not c.flagged
    assert c.redo_seconds == pytest.approx(WALL)
    assert c.kept_cores == [0.0] * 4


def test_a_disturbed_multi_round_block_is_redone_whole():
    now, log = [0.0], []
    c = contestant("a", 6, log, clock=now)
    interference = FakeInterference(cores=[0.0, 0.9], min_block=2.0)  # blocks of two rounds
    run_rounds([c], warmup=0, interference=interference, clock=lambda: now[0])
    assert c.kept_calls == [0, 1, 4, 5, 6, 7]
    assert c.disturbed == c.redone == 2
    assert not c.flagged


def test_when_the_redo_budget_is_spent_disturbed_blocks_are_kept_and_flagged():
    """Every block disturbed, budget 1.0 x 4 planned rounds: 4 rounds redone, then 4 disturbed ones kept."""
    log = []
    c = contestant("a", 4, log)
    run_rounds([c], warmup=0, interference=FakeInterference(rest=2.0), policy=RoundPolicy(redo_budget=1.0))
    assert c.redone == 4
    assert len(c.kept) == 4 and c.kept_calls == [4, 5, 6, 7]
    assert c.kept_disturbed == 4 and c.flagged
    assert c.disturbed == 8
    assert c.calls == 8
    assert c.interference_cores == pytest.approx(2.0)


@pytest.mark.parametrize("budget,redone", [(0.0, 0), (0.5, 2), (0.74, 2)])
def test_redo_budget_is_a_multiple_of_the_planned_rounds(budget, redone):
    log = []
    c = contestant("a", 4, log)
    run_rounds([c], warmup=0, interference=FakeInterference(rest=2.0), policy=RoundPolicy(redo_budget=budget))
    assert c.redone == redone
    assert c.calls == 4 + redone
    assert len(c.kept) == 4 and c.kept_disturbed == 4 and c.flagged
    assert c.disturbed == 4 + redone


def test_with_no_budget_a_disturbed_block_is_kept_and_flagged():
    log = []
    c = contestant("a", 3, log)
    run_rounds([c], warmup=0, interference=FakeInterference(cores=[0.0, 1.0]), policy=RoundPolicy(redo_budget=0))
    assert c.redone == 0 and c.calls == 3
    assert c.disturbed == 1 and c.kept_disturbed == 1 and c.flagged
    assert c.redo_seconds == 0.0


def test_interference_cores_is_the_median_of_the_kept_blocks():
    """The redone block's cores (0.9) are not among the kept ones."""
    log = []
    c = contestant("a", 5, log)
    cores = [0.1, 0.9, 0.2, 0.05, 0.25, 0.15]
    run_rounds([c], warmup=0, interference=FakeInterference(cores=cores), policy=RoundPolicy(threshold=0.3))
    assert c.kept_cores == pytest.approx([0.1, 0.2, 0.05, 0.25, 0.15])
    assert c.interference_cores == pytest.approx(statistics.median([0.1, 0.2, 0.05, 0.25, 0.15]))
    assert c.interference_cores == pytest.approx(0.15)


def test_without_interference_nothing_is_judged():
    log = []
    c = contestant("a", 3, log)
    readings = run_rounds([c], warmup=1, interference=None)
    assert readings == []
    assert len(c.kept) == 3 and c.kept_calls == [1, 2, 3]
    assert c.interference_cores is None and not c.flagged


def test_contestants_alternate_and_each_is_spread_over_the_stretch():
    """Planned 6 and 3: a and b take turns, never b twice running, and b's three rounds fall one in each
    third of a's six (not all at the start)."""
    log = []
    a, b = contestant("a", 6, log), contestant("b", 3, log)
    run_rounds([a, b], warmup=1, interference=FakeInterference())
    assert log[:2] == ["a", "b"]  # warm-up, one call each
    timed = log[2:]
    assert timed.count("a") == 6 and timed.count("b") == 3
    assert len(a.kept) == 6 and len(b.kept) == 3
    assert a.kept_calls == list(range(1, 7)) and b.kept_calls == [1, 2, 3]
    assert "bb" not in "".join(timed)
    a_before_each_b = [timed[:i].count("a") for i, who in enumerate(timed) if who == "b"]
    for k, n in enumerate(a_before_each_b):
        assert 2 * k <= n <= 2 * k + 2, timed
    assert a_before_each_b[-1] >= 4, timed


def test_contestants_of_equal_rounds_take_strict_turns():
    log = []
    a, b = contestant("a", 3, log), contestant("b", 3, log)
    run_rounds([a, b], warmup=0, interference=FakeInterference())
    assert log == ["a", "b"] * 3


def test_a_disturbed_block_is_redone_for_every_contestant_in_it():
    log = []
    a, b = contestant("a", 3, log), contestant("b", 3, log)
    run_rounds([a, b], warmup=0, interference=FakeInterference(cores=[0.0, 1.0]))
    assert a.redone == b.redone == 1 and a.disturbed == b.disturbed == 1
    assert a.kept_calls == b.kept_calls == [0, 2, 3]
    # The block's wall time is shared by its rounds' time: the rows of a group add up to it, not to twice it.
    assert a.redo_seconds + b.redo_seconds == pytest.approx(WALL)


def test_a_dropped_contestant_leaves_and_its_block_is_redone_for_the_others():
    """b changes state after its second call: it leaves, and a's round of that block, which ran beside it,
    is run again; a still gets all its rounds."""
    log = []
    a = contestant("a", 4, log)
    b = contestant("b", 4, log, after_round=drop_at(1, log, "b"))
    run_rounds([a, b], warmup=0, interference=FakeInterference())
    assert b.dropped == "changed state" and b.error is None
    assert len(b.kept) == 1  # its round before, in a block already judged
    assert len(a.kept) == 4 and a.dropped is None
    assert a.kept_calls == [0, 2, 3, 4]  # a's call 1 ran in the block b left
    assert a.redone == 1 and a.disturbed == 0 and not a.flagged
    assert a.redo_seconds == pytest.approx(WALL)
    assert log.count("b") == 2


def test_a_contestant_dropped_in_warmup_never_runs_timed():
    log = []
    a = contestant("a", 3, log)
    b = contestant("b", 3, log, after_round=drop_at(0, log, "b", "state changed in warm-up"))
    run_rounds([a, b], warmup=2, interference=FakeInterference())
    assert b.dropped == "state changed in warm-up" and b.kept == []
    assert log.count("b") == 1
    assert len(a.kept) == 3 and a.redone == 0


def test_a_contestant_that_raises_leaves_with_its_error():
    log = []
    a = contestant("a", 4, log)
    b = contestant("b", 4, log, fail_at=2)
    run_rounds([a, b], warmup=0, interference=FakeInterference())
    assert isinstance(b.error, ValueError) and str(b.error) == "b broke"
    assert b.dropped == "raised ValueError: b broke"
    assert len(b.kept) == 2 and b.calls == 2  # the raising call is not counted
    assert len(a.kept) == 4 and a.error is None and a.dropped is None
    assert a.redone == 1


def test_a_keyboard_interrupt_stops_everything():
    def target():
        raise KeyboardInterrupt

    c = Contestant("a", setup=lambda: ((), {}), target=target, planned=2)
    with pytest.raises(KeyboardInterrupt):
        run_rounds([c], warmup=0, interference=FakeInterference())


def test_summary_gives_the_rows_interference_fields():
    log = []
    c = contestant("a", 3, log)
    policy = RoundPolicy(threshold=0.4, redo_budget=1.0)
    run_rounds([c], warmup=0, interference=FakeInterference(cores=[0.1, 0.5, 0.2, 0.3]), policy=policy)
    assert c.summary(policy) == {
        "disturbed_rounds": 1, "redone_rounds": 1, "interference_cores": pytest.approx(0.2),
        "interference_flagged": False, "redo_seconds": pytest.approx(WALL), "interference_threshold": 0.4,
    }


def test_an_empty_disturbed_block_does_not_stall_the_run():
    """a (6 rounds, sets the pace) leaves at once; b (3 rounds) runs every other cycle. Every block is disturbed,
    so b's rounds are redone until the budget is spent and then kept: the run must still end."""
    log = []
    a = contestant("a", 6, log, after_round=drop_at(0, log, "a"))
    b = contestant("b", 3, log)

    def cores(block):
        if block > 1000:
            raise RuntimeError("still running after 1000 blocks")
        return 1.0

    run_rounds([a, b], warmup=0, interference=FakeInterference(cores=cores))
    assert len(b.kept) == 3 and b.flagged
