"""``disdis report``: one self-contained HTML page of runs and comparisons (disdis.report.html)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="write an HTML report of runs or comparisons",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write one self-contained HTML page (images embedded): for each run, what was run "
        "(method, data, training status), the protocol and whether it is reduced, the metrics table, "
        "the share heat map, DCI's importance matrix, the training curves and every figure `disdis "
        "figures` made; for a comparison folder (disdis compare), its table and the figures of each "
        "method; for several runs, a side-by-side table first.\n\n"
        "examples:\n  disdis report runs/demo --out report.html\n  disdis report runs/compare --out compare.html")
    parser.add_argument("sources", nargs="+", help="run folders and comparison folders")
    parser.add_argument("--out", required=True, help="HTML file to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from disdis.report import write_html_report
    out = write_html_report(args.sources, args.out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
