"""`python -m harness replot RUN.log ...`: redraw the figure of a `sequence` run from its log.

Reads RUN.log and its RUN-loss.csv (as `python -m harness sequence` wrote them) and writes
RUN.png beside them, so committed runs can be re-rendered without retraining.
"""

from __future__ import annotations

from pathlib import Path

HELP = "redraw a sequence run's figure from its log, without retraining"
EXAMPLE = "python -m harness replot reports/sequence/lstm_short-fused.log"


def add_arguments(parser) -> None:
    parser.add_argument("logs", nargs="+", type=Path, metavar="LOG", help="a run's .log, as `sequence` wrote it")


def run(args) -> int:
    from harness.example.plot import replot

    for log in args.logs:
        print(replot(log))
    return 0
