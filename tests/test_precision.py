"""harness.measuring.timing.precision pins every library's arithmetic per mode and puts everything back;
harness.measuring.process_state sees the same settings, and survives getters that raise."""

import pytest
import torch
from torch.backends import ContextProp

from harness.measuring import timing
from harness.measuring.process_state import ProcessState
from harness.measuring.timing import fp32_operations, precision

MODES = ("float32", "float64", "bfloat16", "float16", "tf32")
OPERATIONS = ("matmul", "cudnn_rnn", "cudnn_conv", "mkldnn_matmul", "mkldnn_rnn", "mkldnn_conv")
REDUCTIONS = ("allow_fp16_reduced_precision_reduction", "allow_bf16_reduced_precision_reduction",
              "allow_fp16_accumulation")


def expected_record(mode: str, cupy_tf32: str = "0") -> dict:
    tf32 = mode == "tf32"
    cuda = "tf32" if tf32 else "ieee"
    return {
        "matmul_allow_tf32": tf32, "cudnn_allow_tf32": tf32,
        "matmul_fp32_precision": cuda, "cudnn_rnn_fp32_precision": cuda, "cudnn_conv_fp32_precision": cuda,
        "mkldnn_matmul_fp32_precision": "ieee", "mkldnn_rnn_fp32_precision": "ieee",
        "mkldnn_conv_fp32_precision": "ieee",
        **{f"matmul_{name}": False for name in REDUCTIONS},
        "cupy_tf32": cupy_tf32,
    }


def _attempt(read):
    try:
        return read()
    except RuntimeError as exc:
        return f"raises {exc}"


def snapshot() -> dict:
    """Every setting precision() touches, raw where torch lets us (old getters: value or their error)."""
    b = torch.backends
    state = {key: node.fp32_precision for key, node in fp32_operations().items()}
    state.update({"generic": b.fp32_precision, "cudnn": b.cudnn.fp32_precision, "mkldnn": b.mkldnn.fp32_precision,
                  "old matmul precision": _attempt(torch.get_float32_matmul_precision),
                  "old matmul tf32": _attempt(lambda: b.cuda.matmul.allow_tf32),
                  "old cudnn tf32": _attempt(lambda: b.cudnn.allow_tf32),
                  "fp16 reduction": torch._C._get_cublas_allow_fp16_reduced_precision_reduction(),
                  "bf16 reduction": torch._C._get_cublas_allow_bf16_reduced_precision_reduction(),
                  "fp16 accumulation": b.cuda.matmul.allow_fp16_accumulation})
    return state


@pytest.fixture
def clean_state():
    """Whatever a test sets, the process gets its state back."""
    before = ProcessState.capture()
    yield
    assert before.restore() == []


UNUSUAL = {  # starting states an earlier library could have left, old and new API mixed
    "defaults": lambda: None,
    "new api tf32 matmul (old getters raise)": lambda: setattr(torch.backends.cuda.matmul, "fp32_precision", "tf32"),
    "new api cudnn rnn only": lambda: setattr(torch.backends.cudnn.rnn, "fp32_precision", "ieee"),
    "medium, bf16 onednn": lambda: torch.set_float32_matmul_precision("medium"),
    "generic tf32": lambda: setattr(torch.backends, "fp32_precision", "tf32"),
    "reductions off, no split-k": lambda: (
        setattr(torch.backends.cuda.matmul, "allow_fp16_reduced_precision_reduction", (False, False)),
        setattr(torch.backends.cuda.matmul, "allow_bf16_reduced_precision_reduction", (False, False))),
    "fp16 accumulation on": lambda: setattr(torch.backends.cuda.matmul, "allow_fp16_accumulation", True),
}


@pytest.mark.parametrize("start", UNUSUAL)
@pytest.mark.parametrize("mode", MODES)
def test_every_flag_is_pinned_inside_and_restored_after(clean_state, mode, start):
    UNUSUAL[start]()
    before = snapshot()
    with precision(mode) as record:
        inside = snapshot()
        assert record == expected_record(mode)
    assert snapshot() == before
    tf32 = mode == "tf32"
    for key in OPERATIONS:
        assert inside[f"{key}_fp32_precision"] == ("tf32" if tf32 and not key.startswith("mkldnn") else "ieee")
    # The old getters agree inside, whatever the new API left behind: code reading them does not fail.
    assert inside["old matmul precision"] == ("high" if tf32 else "highest")
    assert inside["old matmul tf32"] is tf32 and inside["old cudnn tf32"] is tf32
    assert inside["fp16 reduction"][0] is False and inside["bf16 reduction"][0] is False
    assert inside["fp16 accumulation"] is False


@pytest.mark.parametrize("mode", MODES)
def test_everything_is_restored_after_an_exception(clean_state, mode):
    torch.backends.cudnn.rnn.fp32_precision = "ieee"  # a mixed state, for good measure
    before = snapshot()
    with pytest.raises(ValueError, match="inside"), precision(mode):
        raise ValueError("inside")
    assert snapshot() == before


def test_nested_pinning_restores_the_outer_mode(clean_state):
    """roofline.measure_ceiling pins again inside the timing's pin."""
    with precision("tf32"):
        outer = snapshot()
        with precision("float32") as record:
            assert record["matmul_fp32_precision"] == "ieee"
        assert snapshot() == outer


def test_cupy_tf32_is_recorded_not_set(clean_state, monkeypatch):
    monkeypatch.setenv("CUPY_TF32", "1")
    with precision("float32") as record:
        assert record == expected_record("float32", cupy_tf32="1")
    monkeypatch.delenv("CUPY_TF32")
    with precision("tf32") as record:
        assert record["cupy_tf32"] == "0"
    import os

    assert "CUPY_TF32" not in os.environ


def _raises(*args):
    raise RuntimeError("mix of the legacy and new APIs (fake)")


def test_old_getters_that_raise_do_not_break_precision(clean_state, monkeypatch):
    """Old getters that always raise: nothing old can be read, pinned or restored, and nothing breaks."""
    monkeypatch.setattr(torch, "get_float32_matmul_precision", _raises)
    monkeypatch.setattr(torch._C, "_get_cublas_allow_tf32", _raises)
    monkeypatch.setattr(type(torch.backends.cudnn), "allow_tf32", ContextProp(_raises, torch._C._set_cudnn_allow_tf32))
    before = snapshot()
    for mode in ("float32", "tf32"):
        with precision(mode) as record:
            assert record["matmul_allow_tf32"].startswith("unreadable (")
            assert record["cudnn_allow_tf32"].startswith("unreadable (")
            pinned = {k: v for k, v in expected_record(mode).items() if not k.endswith("allow_tf32")}
            assert {k: record[k] for k in pinned} == pinned  # the per-operation settings still pinned
        assert snapshot() == before
    assert ProcessState.capture().as_dict()["torch.backends.cudnn.allow_tf32"].startswith("unreadable (RuntimeError")


def test_a_torch_without_the_per_operation_api_gets_the_old_flags(clean_state, monkeypatch):
    monkeypatch.setattr(timing, "fp32_operations", dict)
    torch.backends.cudnn.allow_tf32 = True
    with precision("float32") as record:
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert "matmul_fp32_precision" not in record
        assert record["matmul_allow_tf32"] is False and record["cudnn_allow_tf32"] is False
    assert torch.backends.cudnn.allow_tf32
    with precision("tf32") as record:
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert not torch.backends.cuda.matmul.allow_tf32


# -- process_state ----------------------------------------------------------------------------------

def test_process_state_includes_the_per_operation_settings():
    state = ProcessState.capture().as_dict()
    for name in ("torch.backends.fp32_precision", "torch.backends.cuda.matmul.fp32_precision",
                 "torch.backends.cudnn.rnn.fp32_precision", "torch.backends.cudnn.conv.fp32_precision",
                 "torch.backends.mkldnn.matmul.fp32_precision",
                 "torch.backends.cuda.matmul.allow_fp16_accumulation",
                 "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction_split_k"):
        assert name in state, name
    # Linked settings are restored in an order that leaves none changed.
    assert list(state).index("torch.backends.cudnn.allow_tf32") < list(state).index(
        "torch.backends.cudnn.rnn.fp32_precision")


CHANGES = {  # each a change in either mode
    "old matmul setter": lambda: setattr(torch.backends.cuda.matmul, "allow_tf32",
                                         not torch.backends.cuda.matmul.allow_tf32),
    "old cudnn setter": lambda: setattr(torch.backends.cudnn, "allow_tf32", not torch.backends.cudnn.allow_tf32),
    "new matmul setting": lambda: setattr(torch.backends.cuda.matmul, "fp32_precision",
                                          {"tf32": "ieee"}.get(torch.backends.cuda.matmul.fp32_precision, "tf32")),
    "new onednn rnn setting": lambda: setattr(torch.backends.mkldnn.rnn, "fp32_precision", "bf16"),
    "global setting": lambda: setattr(torch.backends, "fp32_precision", "tf32"),
    "split-k": lambda: setattr(torch.backends.cuda.matmul, "allow_fp16_reduced_precision_reduction", (False, False)),
    "fp16 accumulation": lambda: setattr(torch.backends.cuda.matmul, "allow_fp16_accumulation", True),
    "medium": lambda: torch.set_float32_matmul_precision("medium"),
}


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("mode", ["float32", "tf32"])
def test_process_state_sees_and_undoes_precision_changes_inside_a_pinned_mode(clean_state, mode, change):
    """What an implementation changes inside the harness's pin is seen, and undone exactly."""
    with precision(mode):
        before = ProcessState.capture()
        pinned = snapshot()
        CHANGES[change]()
        assert ProcessState.capture().changes_since(before), "change not seen"
        assert before.restore() == []
        assert ProcessState.capture().changes_since(before) == []
        assert snapshot() == pinned


def test_process_state_capture_survives_a_getter_that_raises(clean_state):
    torch.backends.cuda.matmul.fp32_precision = "tf32"  # the old matmul getters raise from here on
    state = ProcessState.capture()
    values = state.as_dict()
    assert values["torch.get_float32_matmul_precision()"].startswith("unreadable (RuntimeError")
    assert values["torch.backends.cuda.matmul.allow_tf32"].startswith("unreadable (RuntimeError")
    assert values["torch.backends.cuda.matmul.fp32_precision"] == "tf32"
    torch.backends.cuda.matmul.fp32_precision = "ieee"  # readable again: a change
    assert ProcessState.capture().changes_since(state)
    assert state.restore() == []  # the unreadable ones come back with the setting they depend on
    assert ProcessState.capture().changes_since(state) == []
