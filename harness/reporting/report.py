"""The Caffe LSTM's tables from benchmark results (`python -m harness report`: harness.commands.report).

One table per problem, `| Code | Forward (ms) | Backward (ms) | Total (ms) |` with medians,
the fastest of each column in bold, and speedups against a baseline implementation.
Writes reports/<name>.md (and --csv FILE), and prints the markdown.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.contract.problem import PHASES, Problem
from harness.record.schema import PROBLEM_FIELDS, RunSection, problem_label
from harness.reporting.confidence import LEVEL, format_interval, ratio_interval
from harness.reporting.results import Results, Run

PHASE_TITLES = {"forward": "Forward (ms)", "backward": "Backward (ms)", "total": "Total (ms)"}
NOISY = 0.10  # IQR / median above this: the row is flagged (torch.utils.benchmark warns at the same)
NOISE_MARK = "†"
DISTURBED_MARK = "⚠"  # the redo budget ran out: disturbed rounds are in the time
SUSPECT_PERCENT = 100  # faster than the device's own best GEMM: wrong code or a wrong measurement, not a speed
SUSPECT_MARK = "‼"
# A row's agreement error over the error of the float64 reference merely rounded to the problem's dtype
# (Measurement.precision_ratio): below WIDE_RATIO, its results are a wider type's rounded at the end.
# Measured (CPU, float32, input set 0, harness.contract.agreement.precision_ratio): at the smoke shapes
# (batch 1, 2, 5 x length 3, 7; I12 H16 L2) cudnn 6.5 .. 8.5, modular 7.0 .. 9.7, fused 7.9 .. 15;
# B4-T20-I512-H512-L3 cudnn 13.9, modular 10.7, fused 29.1; B20-T20-I512-H512-L3 19.9, 10.6, 28.6;
# B1-T1-I4-H4-L1 5.3, 10.5, 6.8. fused computing in float64 and returning float32: 1.000 at every one of
# these. 2 is twice the one and 2.6x below the least of the correct ones.
WIDE_RATIO = 2.0
WIDE_MARK = "‡"
ERROR_TITLE = "Error (x rounding)"
MISSING = "-"  # a time, rate or speedup that does not exist (the phase crashed or was not run)
PROBLEM_KEY = ["device_name", *PROBLEM_FIELDS]  # a problem of the report: the Problem's fields, on a named device


def format_ms(value: float) -> str:
    """Three significant figures without scientific notation."""
    if pd.isna(value):
        return "-"
    for limit, digits in ((100, 0), (10, 1), (1, 2)):
        if value >= limit:
            return f"{value:.{digits}f}"
    return f"{value:.3f}"


def format_bytes(value) -> str:
    if value is None or pd.isna(value):
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{int(value)} B"


def _speedup(base: float, value: float, base_data=None, data=None) -> str:
    """base/value, with the bootstrap interval of that ratio over both sides' rounds where they are saved."""
    # A crashed or missing phase on either side has no ratio.
    if pd.isna(base) or pd.isna(value):
        return MISSING
    cell = f"{base / value:.2f}x"
    if base_data is data:  # the baseline's own row: 1 by construction
        return cell
    interval = ratio_interval(base_data, data) if _has_rounds(base_data) and _has_rounds(data) else None
    return f"{cell} {format_interval(interval)}" if interval is not None else cell


def _has_rounds(data) -> bool:
    return isinstance(data, list) and len(data) > 0


def _is_suspect(percent: float) -> bool:
    return pd.notna(percent) and percent > SUSPECT_PERCENT


def _time_cells(medians: pd.DataFrame, noise: pd.DataFrame, suspect: pd.DataFrame, disturbed: pd.DataFrame,
                phase: str) -> list[str]:
    best = medians[phase].min()
    cells = []
    for impl, v in medians[phase].items():
        cell = f"**{format_ms(v)}**" if v == best else format_ms(v)
        cell += NOISE_MARK if noise.at[impl, phase] > NOISY else ""
        cell += DISTURBED_MARK if disturbed.at[impl, phase] else ""
        cells.append(cell + f" {SUSPECT_MARK}" if suspect.at[impl, phase] else cell)
    return cells


def _percent_cell(percent: float) -> str:
    if pd.isna(percent):
        return MISSING
    return f"{percent:.0f}% {SUSPECT_MARK}" if _is_suspect(percent) else f"{percent:.0f}%"


def _is_wide(ratio) -> bool:
    return ratio is not None and pd.notna(ratio) and ratio < WIDE_RATIO


def format_ratio(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio < 10 else f"{ratio:.0f}x"


def _error_cell(error, ratio) -> str:
    """The agreement error with its ratio to the dtype's rounding floor, `3.1e-07 (12x)`; marked when the
    ratio says the results are a wider type's rounded at the end."""
    if error is None or pd.isna(error):
        return MISSING
    if ratio is None or pd.isna(ratio):
        return f"{error:.1e}"
    return f"{error:.1e} ({format_ratio(ratio)})" + (f" {WIDE_MARK}" if _is_wide(ratio) else "")


def _has(rows: pd.DataFrame, column: str) -> bool:
    return column in rows and rows[column].notna().any()


def problem_table(rows: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """The Caffe LSTM's table for one problem: median ms per phase, bold minima, speedups."""
    medians = rows.pivot_table(index="impl", columns="phase", values="median_ms", aggfunc="last")
    medians = medians.reindex(columns=[p for p in PHASES if p in medians.columns])
    medians = medians.sort_values("total" if "total" in medians else medians.columns[0])
    table = pd.DataFrame(index=medians.index)

    def per_phase(values: pd.Series) -> pd.DataFrame:  # impl x phase, aligned with medians
        return (rows.assign(v=values).pivot_table(index="impl", columns="phase", values="v", aggfunc="last")
                .reindex(index=medians.index, columns=medians.columns))

    noise = per_phase(rows.iqr_ms / rows.median_ms)
    suspect = per_phase(rows.percent_of_ceiling.map(_is_suspect).astype(float)).fillna(0).astype(bool)
    disturbed = per_phase(_flagged(rows).astype(float)).fillna(0).astype(bool)
    for phase in medians.columns:
        table[PHASE_TITLES[phase]] = _time_cells(medians, noise, suspect, disturbed, phase)
    if baseline in medians.index:
        data = {(r.impl, r.phase): r.data for r in rows.itertuples()} if "data" in rows else {}
        for phase in medians.columns:
            table[f"{phase.capitalize()} vs {baseline}"] = [
                _speedup(medians.at[baseline, phase], v, data.get((baseline, phase)), data.get((impl, phase)))
                for impl, v in medians[phase].items()]
    main_phase = "total" if "total" in medians.columns else medians.columns[0]
    rate = rows[rows.phase == main_phase].set_index("impl").reindex(medians.index)
    gpu = (rows.device == "cuda").any()
    unit, scale = ("TFLOP/s", 1e-3) if gpu else ("GFLOP/s", 1)
    # None, not "-", so the column stays numeric (right-aligned) and to_markdown shows MISSING; object dtype, or
    # pandas' string dtype would turn the None into NaN.
    table[f"{main_phase.capitalize()} {unit}"] = pd.Series(
        [f"{v * scale:.3g}" if pd.notna(v) else None for v in rate.gflops_per_s], index=table.index, dtype=object)
    if rate.percent_of_ceiling.notna().any():
        table["% of ceiling"] = [_percent_cell(v) for v in rate.percent_of_ceiling]
    # Measured once per implementation and problem: any phase's row has it, even when `total` crashed.
    kept = rows.groupby("impl").saved_bytes.last().reindex(medians.index)
    if kept.notna().any():
        table["Kept for backward"] = [format_bytes(v) for v in kept]
    if _has(rows, "precision_ratio"):  # checked once per implementation and problem, like the bytes kept
        agreement = rows.groupby("impl")[["agreement_max_error", "precision_ratio"]].last().reindex(medians.index)
        table[ERROR_TITLE] = [_error_cell(e, r) for e, r in zip(agreement.agreement_max_error,
                                                                 agreement.precision_ratio, strict=True)]
    if gpu and rows.peak_bytes.notna().any():
        peaks = rows.pivot_table(index="impl", columns="phase", values="peak_bytes", aggfunc="last")
        for phase in ("forward", "backward"):
            if phase in peaks:
                table[f"Peak {phase}"] = [format_bytes(v) for v in peaks[phase].reindex(medians.index)]
    table.index.name = "Code"
    return table


def _versions(env: dict) -> str:
    parts = [f"torch {env.get('torch')}", f"CUDA {env.get('torch_cuda') or 'none (CPU build)'}",
             *([f"driver {env['gpu_driver']}"] if env.get("gpu_driver") else []),
             f"cuDNN {env.get('cudnn') or 'none'}", f"CuPy {env.get('cupy') or 'not installed'}",
             f"NumPy {env.get('numpy')}", f"Python {env.get('python')}"]
    return ", ".join(parts)


RATE_COUNTS = "each row's rate counts its phase's GEMM FLOPs (forward 2*T*B*4H*(I+H) per layer, backward twice that)"


def _software(env: dict) -> str:
    return f"{_versions(env)}; lstm-harness {env.get('harness')} at {env.get('harness_commit') or 'unknown commit'}"


SPLITS = {"problem": "one per problem", "impl": "one per problem and implementation"}


def _sweep_lines(run: Run) -> list[str]:
    """A sweep's header: the sweep, then per device the hosts that ran its shards, their software and ceilings.
    Every finished shard's own environment is there: nothing is assumed to be the same across shards."""
    s, sweep = run.section, run.section.sweep or {}
    done = [x for x in run.shards if x.status == "done"]
    failed = len(run.shards) - len(done)
    lines = [f"- **Sweep**: {run.path.name}, {run.datetime}; {len(run.shards)} shard(s) "
             f"({SPLITS.get(sweep.get('split'), sweep.get('split', '?'))}), each a `pytest suites/` run on one "
             f"device, as Ray tasks: {len(done)} done" + (f", {failed} failed (their points are listed as not timed)"
                                                         if failed else "")
             + f"; grid `{s.grid or '?'}` ({s.grid_about or ''})"]
    devices: dict[str, list] = {}
    for shard in done:
        devices.setdefault(shard.device_name or "?", []).append(shard)
    for name, shards in devices.items():
        hosts: dict[str, list] = {}
        for shard in shards:
            hosts.setdefault(shard.info.get("host") or "?", []).append(shard)
        where = "; ".join(
            f"{host} ({len(group)} shard(s)"
            + (f", GPU {', '.join(sorted({str(g) for x in group for g in x.info.get('gpu_ids') or []}))}"
               if any(x.info.get("gpu_ids") for x in group) else "") + ")" for host, group in hosts.items())
        cores = sorted({str(x.environment.get("cpu_count")) for x in shards})
        lines.append(f"- **Device**: {name}: {where} ({'/'.join(cores)} CPU cores visible)")
        software = list(dict.fromkeys(_software(x.environment) for x in shards))
        lines.append(f"- **Software** ({name}): " + " | ".join(software)
                     + (" (the shards differ: see each shard in the results file)" if len(software) > 1 else ""))
        ceilings = [c for x in shards for c in x.info.get("ceilings") or []]
        if ceilings:
            gflops = [c["gflops"] for c in ceilings]
            span = f"{min(gflops):.1f}" if max(gflops) - min(gflops) < 0.05 else \
                f"{min(gflops):.1f} to {max(gflops):.1f}"
            lines.append(f"- **Ceiling** ({name}): {span} GFLOP/s, measured by each shard on its device "
                         f"({len(ceilings)} measurement(s); each row's rate uses its own shard's): "
                         f"{ceilings[0]['how']}; {RATE_COUNTS}")
    allocators = list(dict.fromkeys((x.info.get("settings") or {}).get("allocator") for x in done))
    if any(allocators):
        lines.append(f"- **Memory allocator**: {'; '.join(a for a in allocators if a)}")
    return lines


def _run_lines(results: Results) -> list[str]:
    lines = []
    for run in results.runs:
        if run.shards:
            lines += _sweep_lines(run)
            continue
        env, s = run.environment, run.section
        lines += [
            f"- **Device**: {env.get('device_name')} ({env.get('cpu_count')} CPU cores visible)",
            f"- **Software**: {_software(env)}",
            f"- **Run**: {run.path.name}, {run.datetime}; grid `{s.grid or '?'}` ({s.grid_about or ''})",
        ]
        if s.allocator:
            lines.append(f"- **Memory allocator**: {s.allocator}")
    for run in results.runs:
        for c in [] if run.shards else run.section.ceilings:
            lines.append(f"- **Ceiling**: {c['gflops']:.1f} GFLOP/s, measured: {c['how']}; {RATE_COUNTS}")
    return lines


def _checked_lines(t: pd.DataFrame) -> str:
    """The checks around timing, where the results file records them (older files do not)."""
    if t.get("verified_max_error") is None or t["verified_max_error"].isna().all():
        return ""
    return (f", then on inputs that drive the gates into saturation (worst {t['saturation_max_error'].max():.1e}), "
            f"{_timed_checks(t)} (worst {t['verified_max_error'].max():.1e}); the checks cost "
            f"{_before_timing(t)}{t['check_seconds'].sum():.1f} s during and after "
            f"timing and {t.drop_duplicates(['impl', 'problem_id'])['saturation_seconds'].sum():.1f} s on the "
            "saturating inputs, outside every timed region")


def _before_timing(t: pd.DataFrame) -> str:
    if not _has(t, "agreement_seconds"):
        return ""
    seconds = t.drop_duplicates(["impl", "problem_id"])["agreement_seconds"].sum()
    return f"{seconds:.1f} s on set 0 and the zero state before timing, "


def _timed_checks(t: pd.DataFrame) -> str:
    """Which timed calls were checked: counted where the results file records it (1.5 on)."""
    counted = t.dropna(subset=["checked_calls", "timed_calls"]) if _has(t, "checked_calls") else t.iloc[:0]
    if counted.empty:
        return "and again on the last timed call of each phase, on other inputs than the first check's"
    checked, timed = int(counted["checked_calls"].sum()), int(counted["timed_calls"].sum())
    share = f" ({100 * checked / timed:.1f} %)" if timed else ""
    return (f"and on {checked} of the {timed} timed calls{share} in all, each against the float64 reference for "
            "its own inputs")


def _zero_state_text(t: pd.DataFrame) -> str:
    if not _has(t, "zero_state_max_error"):
        return ""
    return f", on inputs with zero initial state (h0 = c0 = 0; worst {t['zero_state_max_error'].max():.1e})"


def _rounding_text(t: pd.DataFrame) -> str:
    """The legend of the tables' error column and its mark, where the results file records the ratio (1.5 on)."""
    if not _has(t, "precision_ratio"):
        return ""
    rounded = "/".join(sorted(t.loc[t["precision_ratio"].notna(), "dtype"].unique()))
    return (f"; {ERROR_TITLE} in each table: the implementation's worst error on the first check and, in brackets, "
            f"that error over the error of the float64 reference merely rounded to the problem's dtype (the least "
            f"any result stored in that dtype can show; correct float32 implementations measured 5x to 30x); "
            f"{WIDE_MARK} marks a ratio below {WIDE_RATIO:g}x: its errors are those of a float64 result rounded to "
            f"{rounded}: it computes in a wider type than the problem's")


# What peak_bytes meant before results files said (peak_includes): the call's own transient memory.
OLD_PEAK_INCLUDES = ("peak allocated by torch's CUDA allocator during the phase, above what was allocated right "
                     "before the call (written before the results recorded what the number includes)")


def _harness_cost_lines(t: pd.DataFrame) -> list[str]:
    """What the harness itself added per timed round, where the results file records it (1.3 on)."""
    if t.get("harness_seconds") is None or t["harness_seconds"].isna().all():
        return []
    t = t.dropna(subset=["harness_seconds"])
    share = 100 * t["harness_seconds"] / (t["median_ms"] * 1e-3)
    worst = t.loc[share.idxmax()]
    return [f"- **Harness's own time**: inside the timed region but outside the implementation (pytest-benchmark's "
            f"timer, the call, keeping the result) {1e6 * t['harness_seconds'].median():.1f} us per round (median "
            f"over all rows; at most {share.max():.3f} % of a round: {worst['impl']} {worst['phase']} on "
            f"{worst['problem_id']}); fresh inputs (drawn and copied into the buffers) "
            f"{1e6 * t['rotation_seconds'].median():.1f} us per round "
            "(median), in each round's setup, outside the timed region"]


def _flagged(rows: pd.DataFrame) -> pd.Series:
    """Rows whose time includes disturbed rounds (the redo budget ran out); False where not recorded."""
    if "interference_flagged" not in rows:
        return pd.Series(False, index=rows.index)
    return rows["interference_flagged"].map(lambda v: v is True)


def interference_line(t: pd.DataFrame, sections: list[RunSection]) -> str | None:
    """The header's line on what the machine was doing while the rows were timed; None for results written
    before interference was measured."""
    if t.empty or "disturbed_rounds" not in t or t["disturbed_rounds"].isna().all():
        return None
    how = next((s.interference for s in sections if s.interference), None)
    if how and how.startswith("not measured"):
        return f"Interference: {how}; the times below may include other processes' load, unseen."
    t = t.dropna(subset=["disturbed_rounds"])
    threshold = t["interference_threshold"].dropna().max()
    redone, disturbed, kept = (int(t[c].sum()) for c in ("redone_rounds", "disturbed_rounds", "rounds"))
    flagged = t[_flagged(t)]
    cores = t["interference_cores"].dropna()
    typical = (f"other processes used {cores.median():.2f} cores (median over rows; at most {cores.max():.2f}) "
               "during the kept rounds") if not cores.empty else "cores used by others not measured"
    if disturbed == 0:
        return (f"Interference: quiet: no round was timed while other processes used more than {threshold:g} "
                f"cores; {typical}.")
    hit = int((t["disturbed_rounds"] > 0).sum())
    share = 100 * disturbed / (kept + redone)
    text = (f"Interference: disturbed: {disturbed} of {kept + redone} timed rounds ({share:.1f} %) ran while "
            f"other processes used more than {threshold:g} cores, in {hit} of {len(t)} rows; "
            f"{redone} were redone ({t['redo_seconds'].sum():.1f} s of wall time); {typical}.")
    if flagged.empty:
        return text + " Every row kept only quiet rounds."
    return text + (f" {DISTURBED_MARK} {len(flagged)} row(s) could not get enough quiet rounds within the redo budget "
                   "and keep disturbed ones: " + ", ".join(f"{r.impl} {r.phase} {_label(r._asdict())}"
                                                           for r in flagged.itertuples()) + ".")


def _peak_lines(t: pd.DataFrame) -> list[str]:
    """What the Peak columns count, when any table has them (CUDA rows with a peak)."""
    rows = t[(t.device == "cuda") & t.peak_bytes.notna()] if "peak_bytes" in t else t.iloc[:0]
    if rows.empty:
        return []
    meanings = rows.peak_includes.fillna(OLD_PEAK_INCLUDES) if "peak_includes" in rows else \
        pd.Series([OLD_PEAK_INCLUDES])
    return [f"- **Peak memory** (Peak forward, Peak backward): {'; or '.join(dict.fromkeys(meanings))}"]


def _timing_lines(t: pd.DataFrame) -> list[str]:
    if t.empty:
        return ["- **Timing**: nothing was timed: every implementation failed or was skipped on every problem "
                "(each problem's \"Not timed\" list says why)", ""]
    rounds = f"{int(t['rounds'].min())} to {int(t['rounds'].max())}"
    warmups = sorted({int(w) for w in t["warmup_rounds"].dropna()}) or ["?"]
    tol = ", ".join(f"{d} {g:.0e}" for d, g in t.groupby("dtype")["agreement_tolerance"].max().items())
    backends = t.drop_duplicates(["impl", "backend"])[["impl", "backend", "origin"]]
    backends.columns = ["Code", "Backend that ran", "Registered from"]
    setup = setup_cells(t)
    if setup is not None:
        backends["Setup (s)"] = backends["Code"].map(setup)
    return [
        f"- **Precision**: {', '.join(sorted(t['dtype'].unique()))}; TF32 off for cuDNN and cuBLAS",
        f"- **Timing**: pytest-benchmark, median of {rounds} rounds after {'/'.join(map(str, warmups))} "
        "warm-up round(s) (and one untimed probe call); every timed region ends with device completion; "
        f"{NOISE_MARK} marks a time whose interquartile range is above {NOISY:.0%} of its median; "
        f"{SUSPECT_MARK} marks a rate above {SUSPECT_PERCENT}% of the measured ceiling (not to be trusted); "
        f"{DISTURBED_MARK} a time that includes rounds disturbed by other processes (the redo budget ran out); "
        f"each speedup `Nx [low, high]` comes with its {LEVEL:.0%} bootstrap interval over the rounds of both "
        "implementations",
        f"- **Agreement**: every time below comes from an implementation that first matched the float64 "
        f"reference on that problem (norm-wise relative error of outputs and all gradients; tolerance "
        f"{tol}; worst seen {t['agreement_max_error'].max():.1e})" + _zero_state_text(t) + _checked_lines(t)
        + _rounding_text(t),
        *_peak_lines(t),
        *_harness_cost_lines(t),
        "",
        "## Implementations",
        "",
        backends.to_markdown(index=False),
        "",
        *(["Setup: the wall time of building each implementation on a problem (weight conversion, compilation, "
           "extension builds), outside every timed region; at the first problem of the run, then the range over "
           "the others (compilers cache what they built).", ""] if setup is not None else []),
    ]


def setup_cells(t: pd.DataFrame) -> dict[str, str] | None:
    """Per implementation, the wall time of building it (conversion, compilation, ...) in the run's
    order of problems: the first problem's (a compiler's cold start) and the range over the others.
    None when the results predate the field."""
    if "setup_seconds" not in t or t["setup_seconds"].isna().all():
        return None
    cells = {}
    for impl, group in t.drop_duplicates(["impl", "problem_id"]).groupby("impl", sort=False):
        seconds = group["setup_seconds"].dropna().tolist()
        if not seconds:
            cells[impl] = MISSING
        elif len(seconds) == 1:
            cells[impl] = format_seconds(seconds[0])
        else:
            rest = seconds[1:]
            cells[impl] = (f"{format_seconds(seconds[0])} first, then "
                           f"{format_seconds(min(rest))}-{format_seconds(max(rest))}")
    return cells


def format_seconds(value: float) -> str:
    return f"{value:.3g}" if value >= 0.001 else "<0.001"


def _keys(frame: pd.DataFrame) -> list[tuple]:
    return list(dict.fromkeys(tuple(r.values()) for r in frame[PROBLEM_KEY].to_dict("records"))) if len(frame) else []


def _problems(results: Results) -> list[dict]:
    """Every problem with a time or a not-timed entry, in the run's order. Both lists were recorded in
    test order, so a problem where nothing was timed goes before the next problem the two share."""
    timed, failed = _keys(results.timings), _keys(results.not_timed)
    order = list(timed)
    for i, problem in enumerate(failed):
        if problem not in order:
            after = next((q for q in failed[i + 1:] if q in timed), None)
            order.insert(len(order) if after is None else order.index(after), problem)
    return [dict(zip(PROBLEM_KEY, p, strict=True)) for p in order]


def _of(frame: pd.DataFrame, problem: dict) -> pd.DataFrame:
    if frame.empty:
        return frame
    return frame[(frame[PROBLEM_KEY] == pd.Series(problem)).all(axis=1)]


def _noisy_lines(rows: pd.DataFrame) -> list[str]:
    noisy = rows[rows.iqr_ms / rows.median_ms > NOISY]
    if noisy.empty:
        return []
    return [f"{NOISE_MARK} noisy: interquartile range above {NOISY:.0%} of the median ("
            + ", ".join(f"{r.impl} {r.phase} {r.iqr_ms / r.median_ms:.0%}" for r in noisy.itertuples())
            + ")", ""]


def _suspect_lines(rows: pd.DataFrame) -> list[str]:
    """Every phase above the ceiling, not only the one the table's rate column shows."""
    lines = []
    for r in rows[rows.percent_of_ceiling.map(_is_suspect)].itertuples():
        lines += [f"{SUSPECT_MARK} suspect: `{r.impl}` {r.phase} ({format_ms(r.median_ms)} ms) runs at "
                  f"{r.percent_of_ceiling:.0f}% of the measured ceiling ({r.gflops_per_s:.4g} of "
                  f"{r.ceiling_gflops:.4g} GFLOP/s): the time exceeds the device's measured GEMM ceiling and "
                  "should not be trusted (wrong code or a wrong measurement)", ""]
    return lines


def _wide_lines(rows: pd.DataFrame) -> list[str]:
    """The implementations whose errors are a wider type's rounded at the end (one line each)."""
    if not _has(rows, "precision_ratio"):
        return []
    lines = []
    for r in rows[rows.precision_ratio.map(_is_wide)].drop_duplicates("impl").itertuples():
        lines += [f"{WIDE_MARK} wider type: `{r.impl}`'s error ({r.agreement_max_error:.1e}) is "
                  f"{format_ratio(r.precision_ratio)} that of the float64 reference rounded to {r.dtype}: its errors "
                  f"are those of a float64 result rounded to {r.dtype}: it computes in a wider type than the "
                  "problem's, so its times are not those of the problem's arithmetic", ""]
    return lines


def _not_timed_lines(missing: pd.DataFrame) -> list[str]:
    if missing.empty:
        return []
    lines = ["Not timed:", ""]
    for (impl, outcome, reason), group in missing.groupby(["impl", "outcome", "reason"], sort=False):
        lines.append(f"- `{impl}` ({', '.join(group.phase)}): {outcome}: {reason}")
    return lines + [""]


def _problem_section(p: dict, rows: pd.DataFrame, missing: pd.DataFrame, baseline: str,
                     level: str = "##") -> list[str]:
    lines = [f"{level} Batch size = {p['batch']}, Length = {p['length']}", "",
             f"{p['layers']} layer(s), input {p['input_size']}, hidden {p['hidden']}, {p['dtype']}; "
             f"{p['device_name']}", ""]
    if rows.empty:
        lines += ["No implementation was timed on this problem: every one that ran failed or was skipped "
                  "(below).", ""]
    else:
        lines += [problem_table(rows, baseline).to_markdown(missingval=MISSING), ""]
        lines += _suspect_lines(rows) + _wide_lines(rows) + _noisy_lines(rows)
        if baseline not in set(rows.impl):
            lines += [f"(no speedup columns: baseline `{baseline}` has no time on this problem)", ""]
    return lines + _not_timed_lines(missing)


def devices(results: Results) -> list[str]:
    """The device names of the results, in the order their problems come."""
    return list(dict.fromkeys(p["device_name"] for p in _problems(results)))


def _label(row: dict) -> str:
    return problem_label(Problem(**{f: row[f] for f in PROBLEM_FIELDS}))


def cross_device_table(timings: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """The same problem (its sizes and dtype; the device kind may differ), implementation and phase on every
    device: the median per device, and the first device's median over each other's (above 1: faster there)."""
    t = timings.assign(problem=[_label(r) for r in timings[list(PROBLEM_FIELDS)].to_dict("records")])
    medians = t.pivot_table(index=["problem", "impl", "phase"], columns="device_name", values="median_ms",
                            aggfunc="last", sort=False)
    order = {p: i for i, p in enumerate(PHASES)}
    rows = sorted(medians.index, key=lambda k: (list(dict.fromkeys(t.problem)).index(k[0]), k[1], order[k[2]]))
    medians = medians.reindex(index=pd.MultiIndex.from_tuples(rows), columns=names)
    table = pd.DataFrame({"Problem": [k[0] for k in rows], "Code": [k[1] for k in rows],
                          "Phase": [k[2] for k in rows]})
    for name in names:
        table[f"{name} (ms)"] = [format_ms(v) for v in medians[name]]
    for name in names[1:]:
        table[f"{name} vs {names[0]}"] = [_speedup(b, v) for b, v in zip(medians[names[0]], medians[name],
                                                                             strict=True)]
    return table


def _cross_device_lines(results: Results, names: list[str]) -> list[str]:
    lines = ["## Across devices", "",
             f"Median times of the same problem, implementation and phase on each device; `X vs {names[0]}` is "
             f"{names[0]}'s median over X's (above 1.00x: faster on X). A `-`: not timed on that device.", ""]
    if results.timings.empty:
        return lines + ["Nothing was timed.", ""]
    return lines + [cross_device_table(results.timings, names).to_markdown(index=False), ""]


def render(results: Results, baseline: str, title: str, figures: list[Path] = (), base: Path = Path(".")) -> str:
    lines = [f"# LSTM benchmark report: {title}", ""]
    lines += _run_lines(results) + _timing_lines(results.timings)
    interference = interference_line(results.timings, [run.section for run in results.runs])
    if interference is not None:
        at = lines.index("## Implementations")
        lines[at:at] = [interference, ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{f.stem}]({f.relative_to(base).as_posix()})" for f in figures] + [""]
    names = devices(results)
    if len(names) > 1:  # a section per device, after a table of the devices side by side
        timed = [n for n in names if n in set(results.timings.get("device_name", []))]
        if len(timed) > 1:
            lines += _cross_device_lines(results, timed)
        for name in names:
            lines += [f"## Device: {name}", ""]
            for problem in (p for p in _problems(results) if p["device_name"] == name):
                lines += _problem_section(problem, _of(results.timings, problem), _of(results.not_timed, problem),
                                          baseline, level="###")
        return "\n".join(lines).rstrip() + "\n"
    for problem in _problems(results):
        lines += _problem_section(problem, _of(results.timings, problem), _of(results.not_timed, problem), baseline)
    return "\n".join(lines).rstrip() + "\n"
