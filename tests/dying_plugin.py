"""Plugin module for the sweep tests: `dying` is fused, except that its forward kills its own process (SIGKILL,
as the kernel's out-of-memory killer would) or hangs, as $LSTM_TEST_DIE says:

- `once:N:MARKER`: the first call on a problem of batch N in the whole sweep creates MARKER (with its pid) and
  dies; every later call, in whatever process, finds MARKER and runs as fused (a retried shard completes);
- `batch:N`: every call on a problem of batch N dies (its shard dies on every attempt);
- `hang:LENGTH:PIDFILE`: a call on a problem of that length writes its pid to PIDFILE and sleeps (an
  interrupted sweep must not leave it running).

Several, separated by commas, apply together.
"""

import os
import signal
import time

from harness.contract.registry import register
from impls.fused import FusedLSTM


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@register
class Dying(FusedLSTM):
    name = "dying"
    description = "fused, but its forward kills its own process or hangs as $LSTM_TEST_DIE says"

    def forward(self, x, h0, c0):
        for how in filter(None, os.environ.get("LSTM_TEST_DIE", "").split(",")):
            kind, number, path = (how.split(":", 2) + [""])[:3]
            if kind == "once" and self.problem.batch == int(number):
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    continue
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                die()
            elif kind == "batch" and self.problem.batch == int(number):
                die()
            elif kind == "hang" and self.problem.length == int(number):
                with open(path, "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(600)
        return super().forward(x, h0, c0)
