"""The Caffe LSTM's example as the Caffe LSTM trains it: one bias a layer, its learning-rate multipliers, several
seeds, and runs that repeat bit for bit."""

import json

import pytest
import torch

from harness.contract.registry import discover
from harness.example.task import CONFIGS, Trainer, init_network, lr_multipliers
from harness.sequence import main


def _one_step(config: str, biases: int = 1, lr_mults=None, seed: int = 0):
    cfg = CONFIGS[config]
    net = init_network(cfg, seed, torch.float64, biases=biases)
    before = [[t.clone() for t in w.tensors()] for w in net.lstm]
    Trainer(discover().get("fused"), cfg, net, lr=cfg.lr, lr_mults=lr_mults).step()
    # Each layer's change of its effective bias b_ih + b_hh, and of b_hh alone.
    return ([(w.b_ih + w.b_hh) - (b[2] + b[3]) for w, b in zip(net.lstm, before, strict=True)],
            [w.b_hh - b[3] for w, b in zip(net.lstm, before, strict=True)], net)


def test_one_bias_a_layer_moves_at_the_seeds_rate():
    one, one_hh, net = _one_step("lstm_short")
    two, _, _ = _one_step("lstm_short", biases=2)
    assert len(net.parameters()) == 3 * 1 + 2 and net.biases == 1
    assert torch.count_nonzero(one_hh[0]) == 0 and torch.count_nonzero(net.lstm[0].b_hh) == 0
    assert torch.count_nonzero(one[0]) > 0
    # Both biases get the full gradient: the effective bias moves twice as far (the old defect).
    assert torch.allclose(two[0], 2 * one[0], rtol=1e-12, atol=0)


def test_the_seeds_multiplier_doubles_deep_lstm_shorts_first_bias():
    mults = lr_multipliers(CONFIGS["deep_lstm_short"])
    assert mults["lstm1.bias"] == 2.0 and all(v == 1.0 for k, v in mults.items() if k != "lstm1.bias")
    assert all(v == 1.0 for c in ("lstm_short", "lstm_long", "deep_lstm_long")
               for v in lr_multipliers(CONFIGS[c]).values())
    seeds, _, _ = _one_step("deep_lstm_short")
    plain, _, _ = _one_step("deep_lstm_short",
                            lr_mults=dict.fromkeys(CONFIGS["deep_lstm_short"].parameter_names(), 1.0))
    assert torch.allclose(seeds[0], 2 * plain[0], rtol=1e-12, atol=0)
    assert torch.equal(seeds[1], plain[1]) and torch.equal(seeds[2], plain[2])  # the first step: layers apart


def test_with_two_biases_the_seeds_bias_multiplier_applies_to_both():
    mults = lr_multipliers(CONFIGS["deep_lstm_short"], biases=2, extra={"lstm2.bias": 3})
    assert mults["lstm1.b_ih"] == mults["lstm1.b_hh"] == 2.0 and mults["lstm2.b_ih"] == mults["lstm2.b_hh"] == 3.0
    assert mults["lstm3.b_ih"] == 1.0 and "lstm1.bias" not in mults


def test_the_seeds_summary_keeps_a_diverged_run_out_of_the_spread():
    from types import SimpleNamespace

    from harness.example.seeds import _finite_or_null, summary_rows

    def run(seed, nmse):
        return {"config": SimpleNamespace(name="lstm_short"), "impl": SimpleNamespace(name="fused"), "seed": seed,
                "nmse": nmse, "lr_mults": {"out.bias": 1.0}}

    rows = summary_rows([run(0, 0.01), run(1, float("nan")), run(2, 0.2)], threshold=0.05)
    assert rows[0]["learned"] == 1 and rows[0]["diverged"] == [1]
    assert rows[0]["nmse_median"] == pytest.approx(0.105) and (rows[0]["nmse_min"], rows[0]["nmse_max"]) == (0.01, 0.2)
    assert json.loads(json.dumps(_finite_or_null(rows), allow_nan=False))[0]["nmse"] == [0.01, None, 0.2]


def test_an_unknown_multiplier_name_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="'lstm2.bias', not a parameter of lstm_short.*lstm1.w_ih, lstm1.w_hh"):
        lr_multipliers(CONFIGS["lstm_short"], extra={"lstm2.bias": 2})


@pytest.mark.parametrize("args, message", [
    (["--lr-mult", "lstm3.bias=2", "--config", "lstm_short"], "--lr-mult: --lr-mult names 'lstm3.bias'"),
    (["--lr-mult", "out.bias"], "'out.bias' is not NAME=X"),
    (["--lr-mult", "out.bias=-1"], "'-1' is below the minimum 0"),
    (["--lr-mult", "out.bias=1,out.bias=2"], "names out.bias twice"),
    (["--lr-mult", "out.bias=1", "--lr-mult", "out.bias=2"], "--lr-mult: out.bias given twice"),
    (["--seeds", "0"], "argument --seeds: '0' must be positive"),
    (["--seeds", "1,1"], "'1,1' names a seed twice"),
    (["--seeds", "3", "--seed", "2"], "not allowed with argument"),
    (["--biases", "3"], "invalid choice: 3"),
    (["--jobs", "0"], "argument --jobs: '0' must be positive"),
])
def test_bad_faithfulness_options_are_usage_errors(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["--iters", "1", "--out", str(tmp_path), *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_log_header_says_what_trained(tmp_path):
    assert main(["--config", "deep_lstm_short", "--impl", "fused", "--iters", "2", "--out", str(tmp_path),
                 "--no-plot", "--lr-mult", "out.bias=2", "--lr-mult", "lstm3.w_hh=0.5"]) == 0
    header = (tmp_path / "deep_lstm_short-fused.log").read_text().splitlines()
    assert header[4] == ("# network: one trained bias a layer (the Caffe LSTM's); learning-rate multipliers: "
                         "lstm1.bias x2, lstm3.w_hh x0.5, out.bias x2")
    assert header[5].startswith("# ran on CPU: ") and header[6] == "target prediction"
    assert "(chosen by measuring here" in header[0]  # fused names the path it chose, not "at construction"
    sidecar = json.loads((tmp_path / "deep_lstm_short-fused.json").read_text())
    assert sidecar["biases"] == 1 and sidecar["lr_mults"]["out.bias"] == 2 and sidecar["seed"] == 0


def test_several_seeds_write_each_run_and_a_table(tmp_path, capsys):
    assert main(["--config", "lstm_short,deep_lstm_short", "--impl", "fused", "--iters", "3", "--seeds", "5,7",
                 "--out", str(tmp_path), "--success-nmse", "2"]) == 0
    for config in ("lstm_short", "deep_lstm_short"):
        for seed in (5, 7):
            sidecar = json.loads((tmp_path / f"{config}-fused-seed{seed}.json").read_text())
            assert sidecar["seed"] == seed and (tmp_path / f"{config}-fused-seed{seed}.png").is_file()
        assert (tmp_path / f"seeds-{config}-fused.png").is_file()
    table = (tmp_path / "seeds.md").read_text()
    assert "| lstm_short      | fused  | 2 of 2" in table and "lstm1.bias x2" in table
    assert ("`python -m harness sequence --config lstm_short,deep_lstm_short --impl fused --iters 3 --seeds 5,7 "
            "--jobs 1 --dtype float32") in table and f"--out {tmp_path}" in table
    rows = json.loads((tmp_path / "seeds.json").read_text())["rows"]
    assert [r["seeds"] for r in rows] == [[5, 7], [5, 7]] and all(r["success_rate"] == 1.0 for r in rows)
    nmse = {(r["config"], s): n for r in rows for s, n in zip(r["seeds"], r["nmse"], strict=True)}
    assert nmse[("lstm_short", 5)] != nmse[("lstm_short", 7)]  # the seeds are different runs
    capsys.readouterr()
    table_before = table
    with pytest.raises(SystemExit):  # the table of an earlier run is kept like any other file
        main(["--config", "lstm_short", "--impl", "fused", "--iters", "3", "--seeds", "3", "--out", str(tmp_path),
              "--no-plot"])
    assert (f"refusing to overwrite the earlier run's {tmp_path / 'seeds.md'}, {tmp_path / 'seeds.json'}; "
            "pass --overwrite") in capsys.readouterr().err
    assert (tmp_path / "seeds.md").read_text() == table_before


def _loss_files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*-loss.csv"))}


def test_the_same_command_twice_gives_the_same_loss_curve_bit_for_bit(run_python, tmp_path):
    """Two processes (so allocations, thread pools and library paths start afresh), one command."""
    outs = []
    for name in ("first", "second"):
        out = tmp_path / name
        proc = run_python("-m", "harness", "sequence", "--config", "deep_lstm_short,lstm_long", "--impl", "fused",
                          "--iters", "40", "--no-plot", "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        outs.append(out)
    first, second = _loss_files(outs[0]), _loss_files(outs[1])
    assert len(first) == 2 and first == second
    for log in ("deep_lstm_short-fused.log", "lstm_long-fused.log"):
        rows = [(o / log).read_text().split("target prediction\n")[1] for o in outs]
        assert rows[0] == rows[1]


def test_runs_in_worker_processes_give_what_one_process_gives(tmp_path):
    """Process layout alone changes nothing: one thread a run either way (a different thread count may
    change a threaded product's order of summation on some CPUs, and the log names the count)."""
    common = ["--config", "lstm_short", "--impl", "fused", "--iters", "20", "--seeds", "2", "--no-plot"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # --jobs 2 gives each worker max(1, threads // 2) = 1
    try:
        assert main([*common, "--out", str(tmp_path / "one")]) == 0
        assert main([*common, "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert _loss_files(tmp_path / "one") == _loss_files(tmp_path / "two")
    assert json.loads((tmp_path / "two" / "lstm_short-fused-seed1.json").read_text())["jobs"] == 2


def test_a_worker_whose_command_has_ended_stops():
    import os

    from harness.example.command import _stop_if_orphaned

    _stop_if_orphaned({"parent_pid": os.getppid()})  # its command is alive: goes on
    _stop_if_orphaned({})  # not a worker
    with pytest.raises(SystemExit, match="that started this run has ended"):
        _stop_if_orphaned({"parent_pid": os.getppid() + 100000})
