"""Plugin module: `check_only` is fused, declared checkable but not timeable here (as Triton's CPU
interpreter is): agreement must run it, the speed suite must list it as not timed."""

from harness.contract.impl import Support
from harness.contract.registry import register
from impls.fused import FusedLSTM


@register
class CheckOnly(FusedLSTM):
    name = "check_only"
    description = "fused, whose times here would mean nothing"

    @classmethod
    def supports(cls, problem):
        return Support.check_only("an interpreter is not a speed")
