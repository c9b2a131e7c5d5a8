"""DVC stage `report`: paper/report.md from paper/report_template.md and the pipeline's results.

    python experiments/report.py [--results results] [--template paper/report_template.md]

The template holds the prose; every number, table and verdict comes from `results/` through
the template's placeholders, so the report is regenerated with the results and never edited by
hand. Verdicts are computed from paired per-object differences and their 95% t-intervals:
"better"/"worse" only when the interval excludes zero. The placeholders and how each is filled:
ouroboros3d/reporting/report.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ouroboros3d.config import load_params
from ouroboros3d.errors import ArgumentParser, UserError, guard
from ouroboros3d.files import atomic_write_text
from ouroboros3d.reporting.report import PlaceholderError, render_report
from ouroboros3d.reporting.results_files import read_text_file


@guard
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--results", default="results")
    parser.add_argument("--template", default="paper/report_template.md")
    parser.add_argument("--out", default="paper/report.md")
    args = parser.parse_args(argv)
    params = load_params(args.params)  # a bad params file: one line and exit 2 (guard)
    if not Path(args.results).is_dir():
        raise FileNotFoundError(f"{args.results}: no such results folder (run `dvc repro` first)")
    # the template is a source file, not a stage's output
    fix = f"save it as UTF-8, or restore it with `git checkout -- {args.template}`"
    template = read_text_file(args.template, fix)
    try:
        report = render_report(template, params, Path(args.results))
    except PlaceholderError as e:
        raise UserError(f"{args.template}: {e}; see ouroboros3d/reporting/report.py for the placeholders") from None
    atomic_write_text(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
