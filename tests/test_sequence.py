import argparse

import pytest
import torch
from mutants import ForgetBiasOffByOne

from harness.contract.inputs import make_inputs
from harness.contract.registry import discover
from harness.example import command as sequence
from harness.example.task import CONFIGS, GATE_CLIP, clipping_for, init_network, target_sequence
from harness.example.training_agreement import agrees, train, training_gaps
from harness.sequence import main


def test_target_is_the_seeds_sequence():
    f = target_sequence(960)
    assert abs(float(f.mean())) < 1e-12
    t = 0.01 * torch.arange(960, dtype=torch.float64)
    raw = 0.5 * torch.sin(2 * t) - 0.05 * torch.cos(17 * t + 0.8) + 0.05 * torch.sin(25 * t + 10) \
        - 0.02 * torch.cos(45 * t + 0.3)
    assert torch.allclose(f, raw / raw.abs().max() - (raw / raw.abs().max()).mean())
    assert torch.equal(target_sequence(320), target_sequence(320))


def test_configs_and_init_follow_the_seed():
    assert {(c.name, c.layers, c.hidden, c.length, c.lr) for c in CONFIGS.values()} == {
        ("lstm_short", 1, 15, 320, 1e-4), ("lstm_long", 1, 50, 960, 1e-4),
        ("deep_lstm_short", 3, 7, 320, 1e-4), ("deep_lstm_long", 3, 23, 960, 5e-5)}
    net = init_network(CONFIGS["deep_lstm_long"], seed=3)
    H = 23
    for w in net.lstm:
        assert torch.all((w.b_ih + w.b_hh)[H:2 * H] == 5) and torch.all((w.b_ih + w.b_hh)[:H] == 0)
        assert 0.08 < float(w.w_hh.std()) < 0.12
    assert net.w_out.shape == (1, H)


def test_clipping_choice():
    reg = discover()
    assert clipping_for(reg.get("fused")) == "gate" and clipping_for(reg.get("cudnn")) == "norm"
    with pytest.raises(ValueError, match="cannot clip gate gradients"):
        clipping_for(reg.get("cudnn"), "gate")


@pytest.mark.parametrize("name", ["fused", "numpy", "modular"])
def test_gate_clipping_inside_backward_agrees(name, small):
    """Gate clipping changes the gradients, and every implementation that offers it agrees."""
    inputs = make_inputs(small.replace(dtype="float64"))
    dy = inputs.dy * 200  # large enough that the clamp engages
    grads = {}
    for impl_name in ("fused", name):
        impl = discover().get(impl_name)(small.replace(dtype="float64"), inputs.weights)
        impl.forward(inputs.x, inputs.h0, inputs.c0)
        grads[impl_name] = impl.backward(dy, inputs.dh_n, inputs.dc_n, gate_clip=GATE_CLIP).named()
    impl = discover().get("fused")(small.replace(dtype="float64"), inputs.weights)
    impl.forward(inputs.x, inputs.h0, inputs.c0)
    unclipped = impl.backward(dy, inputs.dh_n, inputs.dc_n).named()
    assert not torch.allclose(unclipped["dw_hh[1]"], grads["fused"]["dw_hh[1]"])
    for key, value in grads["fused"].items():
        assert torch.allclose(grads[name][key], value, rtol=1e-10, atol=1e-12), key


def test_cudnn_refuses_gate_clipping(small):
    inputs = make_inputs(small)
    impl = discover().get("cudnn")(small, inputs.weights)
    impl.forward(inputs.x, inputs.h0, inputs.c0)
    with pytest.raises(NotImplementedError, match="cannot clip"):
        impl.backward(inputs.dy, inputs.dh_n, inputs.dc_n, gate_clip=0.1)


def test_training_agreement_catches_a_mutant():
    good = train(discover().get("fused"), "caffe", iterations=30)
    assert agrees(training_gaps(good, train(discover().get("numpy"), "caffe", iterations=30)))
    gaps = training_gaps(good, train(ForgetBiasOffByOne, "caffe", iterations=30))
    assert not agrees(gaps) and gaps["curve"] > 1e-4


def test_cli_trains_generates_and_writes(tmp_path, capsys):
    assert main(["--config", "lstm_short", "--impl", "numpy,cudnn", "--iters", "40", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "lstm_short | numpy | seed 0 | 40 iterations | NMSE" in out and "iterations/s" in out
    assert "global gradient norm clipped" in out  # cudnn cannot clip gates: says which clipping ran
    log = (tmp_path / "lstm_short-numpy.log").read_text().splitlines()
    assert log[0].startswith("# lstm_short") and "target prediction" in log
    pairs = log[log.index("target prediction") + 1:]
    assert len(pairs) == 320 and all(len(p.split()) == 2 for p in pairs)
    assert (tmp_path / "lstm_short-numpy.png").stat().st_size > 10_000
    losses = (tmp_path / "lstm_short-cudnn-loss.csv").read_text().splitlines()
    assert losses[0] == "iteration,loss" and len(losses) == 41


@pytest.mark.parametrize("args,message", [
    (["--config", "huge"], "--config: unknown configuration 'huge'"),
    (["--impl", "nope"], "--impl: unknown implementation 'nope'"),
    (["--iters", "0"], "argument --iters: '0' must be positive"),
    (["--iters", "-5"], "argument --iters: '-5' must be positive"),
    (["--iters", "ten"], "argument --iters: 'ten' is not an integer"),
    (["--lr=-1e-4"], "argument --lr: '-1e-4' must be positive"),
    (["--lr", "0"], "argument --lr: '0' must be positive"),
    (["--impl", "cudnn", "--clipping", "gate"], "cudnn cannot clip gate gradients"),
    (["--lr", "nan"], "argument --lr: 'nan' is not a finite number"),
    (["--lr", "inf"], "argument --lr: 'inf' is not a finite number"),
    (["--lr=-inf"], "argument --lr: '-inf' is not a finite number"),
    (["--lr", "1e999"], "argument --lr: '1e999' is not a finite number"),
    (["--norm-clip", "nan"], "argument --norm-clip: 'nan' is not a finite number"),
    (["--norm-clip", "inf"], "argument --norm-clip: 'inf' is not a finite number"),
    (["--norm-clip", "0"], "argument --norm-clip: '0' must be positive"),
    (["--seed", str(2**63)], f"argument --seed: '{2**63}' is outside 0 to {2**63 - 1}"),
    (["--seed=-1"], f"argument --seed: '-1' is outside 0 to {2**63 - 1}"),
])
def test_bad_options_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(args + ["--iters", "1"] if "--iters" not in args else args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def _quick(out, *extra):
    """The cheapest run: one iteration of the smallest configuration through cudnn (the fastest here)."""
    return ["--config", "lstm_short", "--impl", "cudnn", "--iters", "1", "--out", str(out), *extra]


@pytest.fixture
def no_training(monkeypatch):
    """Makes any training an error: a refusal must come before it."""
    def train_one(*args):
        raise AssertionError("training started")
    monkeypatch.setattr(sequence, "train_one", train_one)


def test_earlier_outputs_are_not_overwritten_without_overwrite(tmp_path, capsys, monkeypatch):
    assert main(_quick(tmp_path, "--no-plot")) == 0
    names = ["lstm_short-cudnn.log", "lstm_short-cudnn-loss.csv"]
    before = {n: (tmp_path / n).read_text() for n in names}
    capsys.readouterr()
    monkeypatch.setattr(sequence, "train_one", lambda *args: pytest.fail("training started"))
    with pytest.raises(SystemExit) as info:
        main(_quick(tmp_path, "--no-plot", "--seed", "1"))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (f"--out: refusing to overwrite the earlier run's {tmp_path / names[0]}, "
            f"{tmp_path / 'lstm_short-cudnn.json'}, {tmp_path / names[1]}; "
            f"pass --overwrite to replace them, or choose another --out") in err
    assert {n: (tmp_path / n).read_text() for n in names} == before
    monkeypatch.undo()
    assert main(_quick(tmp_path, "--no-plot", "--seed", "1", "--overwrite")) == 0
    log = (tmp_path / names[0]).read_text()
    assert log != before[names[0]] and "seed 1" in log.splitlines()[1]


def test_one_existing_figure_is_enough_to_refuse(tmp_path, capsys, no_training):
    (tmp_path / "lstm_short-cudnn.png").write_bytes(b"an earlier figure")
    with pytest.raises(SystemExit) as info:
        main(_quick(tmp_path))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"refusing to overwrite the earlier run's {tmp_path / 'lstm_short-cudnn.png'}; pass --overwrite" in err
    assert (tmp_path / "lstm_short-cudnn.png").read_bytes() == b"an earlier figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lstm_short-cudnn.png"]


@pytest.mark.parametrize("where", ["out", "parent"])
def test_out_that_is_a_file_is_refused_before_training(where, tmp_path, capsys, no_training):
    file = tmp_path / "not_a_folder"
    file.write_text("keep me")
    out = file if where == "out" else file / "sub"
    with pytest.raises(SystemExit) as info:
        main(_quick(out))
    assert info.value.code == 2
    assert f"--out: {file} is an existing file, not a directory" in capsys.readouterr().err
    assert file.read_text() == "keep me"


def test_a_directory_in_the_way_is_refused_even_with_overwrite(tmp_path, capsys, no_training):
    (tmp_path / "lstm_short-cudnn.log").mkdir()
    with pytest.raises(SystemExit) as info:
        main(_quick(tmp_path, "--overwrite"))
    assert info.value.code == 2
    assert f"cannot write {tmp_path / 'lstm_short-cudnn.log'}: a directory of that name is in the way" \
        in capsys.readouterr().err


def test_output_names_keep_a_dotted_implementation_name(tmp_path):
    cls = type("Dotted", (ForgetBiasOffByOne,), {"name": "fused.v2"})
    args = argparse.Namespace(out=tmp_path, no_plots=False, seeds=[0])
    assert [p.name for p in sequence.output_paths(CONFIGS["lstm_short"], cls, args)] == [
        "lstm_short-fused.v2.log", "lstm_short-fused.v2-loss.csv", "lstm_short-fused.v2.png"]


@pytest.mark.parametrize("config", ["lstm_short", "lstm_long", "deep_lstm_short", "deep_lstm_long"])
def test_every_configuration_runs_through_every_implementation(config, tmp_path, capsys):
    impls = [r.name for r in discover() if r.cls.supports(_cpu_probe()).ok]
    assert {"cudnn", "fused", "modular", "numpy"} <= set(impls) and "cupy" not in impls  # cupy: CUDA only
    assert main(["--config", config, "--impl", ",".join(impls), "--iters", "2", "--out", str(tmp_path),
                 "--no-plot"]) == 0
    out = capsys.readouterr().out
    length = 320 if config.endswith("short") else 960
    for impl in impls:
        assert f"{config} | {impl} | seed 0 | 2 iterations" in out
        log = (tmp_path / f"{config}-{impl}.log").read_text().splitlines()
        assert len(log) - log.index("target prediction") - 1 == length


def test_the_loss_falls_through_the_cli(tmp_path):
    assert main(["--config", "lstm_short", "--impl", "numpy", "--iters", "300", "--out", str(tmp_path),
                 "--no-plot"]) == 0
    losses = (tmp_path / "lstm_short-numpy-loss.csv").read_text().splitlines()[1:]
    first, last = float(losses[0].split(",")[1]), float(losses[-1].split(",")[1])
    assert last < 0.5 * first


def _cpu_probe():
    from harness.contract.problem import Problem

    return Problem(batch=1, length=1, input_size=1, hidden=7, layers=1)
