"""DVC stage `tables`: the analogues of the paper's Table 2 (ablation) and Table 3 (feedback window).

    python experiments/tables.py [--eval results/eval] [--out results/tables]

Reads every ``results/eval/<run>/metrics.json`` (experiments/evaluate.py) and writes
``table2_ablation.{md,csv}`` and ``table3_feedback_window.{md,csv}``: mean ± half-width of the
95% t-interval over eval objects, with the paper's numbers (GSO, 512², facts.md) in the column
beside ours. Runs are placed by what their metrics.json records (the model's switches, the
feedback start), not by folder name.

Table 2, one row per block of params ``variants``: its run ``results/eval/<variant>``, or the
main model's run when the main model has the same switches (so the default ``full`` variant
need not be trained twice). Table 3: the main model sampled with feedback from
``feedback_start`` of the way on (0 = every step). Both tables add reference rows (G on the
ground-truth views, the 1-step sample), the trivial baselines (the input view copied to every
view, a blank white image) and, for geometry, the oracle (the ground-truth depth maps'
points), all through the same metric code. The rules are in ouroboros3d/reporting/tables.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ouroboros3d.config import load_params
from ouroboros3d.errors import ArgumentParser, guard
from ouroboros3d.files import atomic_write_text
from ouroboros3d.reporting.tables import build_tables, load_runs, protocol_notes, variant_switches


@guard
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--eval", default="results/eval", help="the folder of experiments/evaluate.py's runs")
    parser.add_argument("--out", default="results/tables")
    parser.add_argument("--fscore", type=float, default=0.05, help="the F-score threshold shown")
    args = parser.parse_args(argv)
    params = load_params(args.params)  # a bad params file: one line and exit 2 (guard)
    runs = load_runs(args.eval)
    notes = protocol_notes(runs)
    out = Path(args.out)
    for table in build_tables(runs, variant_switches(params), args.fscore):
        atomic_write_text(out / f"{table.stem}.md", table.markdown(notes))
        atomic_write_text(out / f"{table.stem}.csv", table.csv())
        print(f"# {table.title}\n\n{table.body()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
