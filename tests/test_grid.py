import pytest
import torch

from harness.contract.grid import GRIDS, GridError, build_problems, parse_number, parse_positive_ints
from harness.contract.registry import discover
from harness.measuring.session import Settings

NO_GPU = not torch.cuda.is_available()


def settings(**options):
    return Settings.from_options(lambda name: options.get(name))


def test_default_grid_on_cpu_is_seed_shape_at_512():
    s = settings(lstm_device="cpu")
    assert s.grid.name == "cpu" and s.device == "cpu"
    assert [(p.batch, p.length) for p in s.problems] == [(20, 100), (4, 100), (20, 20), (4, 20)]
    assert {(p.hidden, p.input_size, p.layers, p.dtype) for p in s.problems} == {(512, 512, 3, "float32")}
    assert {r.name for r in s.impls} >= {"cudnn", "fused", "modular", "cupy", "numpy"}


def test_caffe_grid_is_the_caffe_projects_table():
    problems = build_problems(GRIDS["caffe"], "cpu")
    assert [(p.batch, p.length) for p in problems] == [(20, 100), (4, 100), (20, 20), (4, 20)]
    assert {(p.hidden, p.input_size, p.layers) for p in problems} == {(2048, 2048, 3)}


def test_seed_is_an_old_name_of_the_caffe_grid():
    assert settings(lstm_device="cpu", lstm_grid="seed").grid is GRIDS["caffe"]


def test_explicit_values_override_the_grid():
    s = settings(lstm_device="cpu", lstm_grid="smoke", lstm_batch="3", lstm_length="9,2", lstm_hidden="8",
                 lstm_layers="1", lstm_dtype="float32,float64", lstm_impls="fused,cudnn")
    assert [r.name for r in s.impls] == ["fused", "cudnn"]
    assert {(p.batch, p.hidden, p.input_size, p.layers) for p in s.problems} == {(3, 8, 8, 1)}
    assert sorted({p.length for p in s.problems}) == [2, 9]
    assert {p.dtype for p in s.problems} == {"float32", "float64"}
    assert settings(lstm_device="cpu", lstm_grid="smoke", lstm_input="5").problems[0].input_size == 5
    assert settings(lstm_device="cpu", lstm_grid="smoke").problems[0].input_size == 12


@pytest.mark.parametrize("options,message", [
    ({"lstm_batch": "0"}, "--lstm-batch: 0 is not a positive integer"),
    ({"lstm_length": "-3"}, "--lstm-length: -3 is not a positive integer"),
    ({"lstm_hidden": "2.5"}, "--lstm-hidden: '2.5' is not an integer"),
    ({"lstm_layers": "two"}, "--lstm-layers: 'two' is not an integer"),
    ({"lstm_input": ""}, "--lstm-input: '' is not an integer"),
    ({"lstm_dtype": "float8"}, "--lstm-dtype: unknown value 'float8'"),
    ({"lstm_device": "tpu"}, "--lstm-device: unknown device 'tpu'"),
    ({"lstm_grid": "huge"}, "--lstm-grid: unknown grid 'huge'"),
    ({"lstm_impls": "fused,nope"}, "--lstm-impls: unknown value 'nope'; choose from"),
    ({"lstm_skip_impls": "nope"}, "--lstm-skip-impls: unknown value 'nope'; choose from"),
    ({"lstm_impls": "fused", "lstm_skip_impls": "fused"}, "--lstm-skip-impls: fused leaves no implementation"),
    ({"lstm_rounds": "0"}, "--lstm-rounds: 0 is below the minimum 1"),
    ({"lstm_max_time": "fast"}, "--lstm-max-time: 'fast' is not a number"),
    ({"lstm_max_time": "nan"}, "--lstm-max-time: nan is not a finite number"),
    ({"lstm_max_time": "NaN"}, "--lstm-max-time: NaN is not a finite number"),
    ({"lstm_max_time": "inf"}, "--lstm-max-time: inf is not a finite number"),
    ({"lstm_max_time": "-inf"}, "--lstm-max-time: -inf is not a finite number"),
    ({"lstm_max_time": "1e999"}, "--lstm-max-time: 1e999 is not a finite number"),
    ({"lstm_seed": str(2**63)}, f"--lstm-seed: {2**63} is above the maximum {2**63 - 1}"),
    ({"lstm_seed": str(10**400)}, "is above the maximum 9223372036854775807"),
    ({"lstm_seed": "-1"}, "--lstm-seed: -1 is below the minimum 0"),
])
def test_invalid_values_name_the_option(options, message):
    with pytest.raises(GridError) as info:
        settings(lstm_device="cpu", **options) if "lstm_device" not in options else settings(**options)
    assert message in str(info.value)


def test_skipped_implementations_are_left_out_of_the_given_ones_or_of_every_registered_one():
    every = settings(lstm_device="cpu", lstm_grid="smoke")
    left = settings(lstm_device="cpu", lstm_grid="smoke", lstm_skip_impls="fused,cudnn")
    assert [r.name for r in left.impls] == [r.name for r in every.impls if r.name not in ("fused", "cudnn")]
    given = settings(lstm_device="cpu", lstm_grid="smoke", lstm_impls="fused,cudnn,modular", lstm_skip_impls="cudnn")
    assert [r.name for r in given.impls] == ["fused", "modular"]


def test_largest_seed_and_finite_time_are_accepted():
    s = settings(lstm_device="cpu", lstm_grid="smoke", lstm_seed=str(2**63 - 1), lstm_max_time="1e-3")
    assert s.seed == 2**63 - 1 and s.max_time == 1e-3


def test_parse_number_bounds():
    assert parse_number("--x", " 7 ", int, minimum=0, maximum=7) == 7
    assert parse_number("--x", None, int, maximum=7) is None
    with pytest.raises(GridError, match="--x: 8 is above the maximum 7"):
        parse_number("--x", "8", int, maximum=7)
    with pytest.raises(GridError, match="--x: nan is not a finite number"):
        parse_number("--x", "nan", float, minimum=0.0)


@pytest.mark.skipif(not NO_GPU, reason="a GPU is present here")
def test_cuda_without_gpu_is_a_usage_error():
    with pytest.raises(GridError, match="--lstm-device: cuda was asked for but no CUDA GPU"):
        settings(lstm_device="cuda")


def test_parse_keeps_order_and_drops_repeats():
    assert parse_positive_ints("--x", "20, 4,20") == (20, 4)
    assert parse_positive_ints("--x", None) is None


def test_bad_options_stop_pytest_before_anything_runs(run_python):
    proc = run_python("-m", "pytest", "suites", "--benchmark-only", "--lstm-batch", "0", "-p", "no:cacheprovider")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "--lstm-batch: 0 is not a positive integer" in proc.stderr
    assert "passed" not in proc.stdout and "failed" not in proc.stdout
    proc = run_python("-m", "pytest", "suites", "--lstm-impls", "cudnn,nope", "-p", "no:cacheprovider")
    assert proc.returncode == 4 and "known" not in proc.stdout
    assert f"unknown value 'nope'; choose from {', '.join(discover().names())}" in proc.stderr


def test_nan_max_time_stops_pytest_before_anything_runs(run_python):
    proc = run_python("-m", "pytest", "suites/test_agreement.py", "--lstm-grid", "smoke", "--lstm-max-time", "nan",
                      "-p", "no:cacheprovider")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "--lstm-max-time: nan is not a finite number" in proc.stderr
    assert "passed" not in proc.stdout and "failed" not in proc.stdout


@pytest.mark.parametrize("dtype", ["tf32", "float16"])
def test_gpu_only_precision_modes_are_refused_on_the_cpu(dtype):
    with pytest.raises(GridError, match=f"--lstm-dtype: {dtype} cannot run on cpu: {dtype} is a GPU mode"):
        settings(lstm_device="cpu", lstm_dtype=dtype)
    assert {p.dtype for p in settings(lstm_device="cpu", lstm_dtype="bfloat16").problems} == {"bfloat16"}
