"""Plugin module for `--lstm-plugin raising_plugin`: registers one implementation, then fails at import.

What a plugin with a bug at import time looks like: the harness must name it and drop its half-made
registration, not crash with a traceback.
"""

from harness.contract.registry import register
from impls.fused import FusedLSTM


@register
class HalfRegistered(FusedLSTM):
    name = "raising_half"
    description = "registered by a plugin module that then raises at import"


raise RuntimeError("raising_plugin is broken on purpose")
