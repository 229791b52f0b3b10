"""``python -m labkit.report DIR`` / ``labkit-report DIR``: the report of a multirun or a run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from labkit.errors import LabkitError
from labkit.report.report import build_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="labkit-report",
        description="Table (console, report.md, report.csv) and figures of a multirun or run directory.",
    )
    parser.add_argument("folder", help="a multirun directory (its job folders are read) or a run directory")
    parser.add_argument("-o", "--out", help="where to write the report files (default: the folder itself)")
    parser.add_argument("--no-figures", action="store_true", help="tables only")
    parser.add_argument("--compare", action="append", default=[], metavar="KEY",
                        help="compare the values of a swept KEY (e.g. model.residual) paired over seeds, "
                             "each against the first (false for a flag); swept flags are always compared")
    args = parser.parse_args(argv)
    try:
        build_report(args.folder, args.out, figures=not args.no_figures, compare=args.compare)
    except LabkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
