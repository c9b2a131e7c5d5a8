"""DVC stage `evaluate_window`: Table 3, the main model with feedback only from a fraction of the steps on.

    python experiments/evaluate_window.py --feedback-start 0.4 [--same-as results/eval/main]

A model with feedback is evaluated by experiments/evaluate.py with ``--feedback-start``. A model
without feedback (after ``dvc exp run -S feedback=false``) has nothing to switch: every window is
the same computation as its full run (no step feeds back, see ``model.sample``). Its windows are
then the run in ``--same-as`` (the `evaluate` stage's, which this stage depends on), checked to
be of the same model, objects and sampling settings, written under the window's name without
the mesh columns that window runs do not compute. tests/test_evaluate.py checks that this equals
a full window evaluation of a no-feedback model.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from ouroboros3d.errors import ArgumentParser, UserError, count, guard
from ouroboros3d.evaluation.evaluate import run_name
from ouroboros3d.files import atomic_write_bytes, atomic_write_text
from ouroboros3d.inference.model_folder import read_checkpoint_params

MESH_COLUMNS = ("mesh_", "volume_iou")  # prefixes of the columns only Table 2's runs have


@guard
def main(argv: list[str] | None = None) -> int:
    own = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    own.add_argument("--same-as", default=None, help="the full run of the same weights, reused without feedback")
    args, rest = own.parse_known_args(sys.argv[1:] if argv is None else argv)
    # the options of experiments/evaluate.py this stage needs to know (the rest pass through)
    common = ArgumentParser(add_help=False)
    common.add_argument("--variant", default="main")
    common.add_argument("--models", default="models")
    common.add_argument("--out", default="results/eval")
    common.add_argument("--name", default=None)
    common.add_argument("--feedback-start", type=fraction, required=True)
    # evaluate.py's counts, checked here too, before anything loads (and in the reuse path below)
    for option, minimum in (("--steps", 1), ("--batch-size", 1), ("--max-objects", 1), ("--record-steps", 0)):
        common.add_argument(option, type=count(minimum), default=None)
    run, _ = common.parse_known_args(rest)
    _, model_params = read_checkpoint_params(Path(run.models) / run.variant)
    if not model_params.feedback and args.same_as is not None:
        ignored = [
            f"--{k.replace('_', '-')}" for k in ("steps", "max_objects", "record_steps") if getattr(run, k) is not None
        ]
        if ignored:  # the reused run was made with its own values: these would be silently ignored
            raise UserError(
                f"{' and '.join(ignored)} cannot apply to this window: the model has no feedback, so the window is "
                f"the run in {args.same_as}, reused as it is; drop {' and '.join(ignored)} or --same-as"
            )
    if model_params.feedback or args.same_as is None:
        evaluate = Path(__file__).with_name("evaluate.py")
        return subprocess.run([sys.executable, str(evaluate), *rest], check=False).returncode
    name = run.name or run_name(run.variant, run.feedback_start)
    reuse(Path(args.same_as), Path(run.out) / name, name, run.variant, run.feedback_start)
    print(f"{name}: the model has no feedback, so this window is the run in {args.same_as} (reused)")
    return 0


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1] (the feedback start)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value:g}")
    return value


def reuse(source: Path, out_dir: Path, name: str, variant: str, feedback_start: float) -> None:
    """Write ``source``'s run as the window run ``name`` (see the module docstring)."""
    report_path = source / "metrics.json"
    if not report_path.is_file():
        raise UserError(f"{report_path} not found: run the `evaluate` stage first")
    report = json.loads(report_path.read_text())
    if report["variant"] != variant or report["model"]["feedback"]:
        raise UserError(f"{source} is not a run of the no-feedback model {variant!r}: cannot reuse it")
    per_object = pd.read_csv(source / "per_object.csv")
    mesh = [c for c in per_object.columns if c.startswith(MESH_COLUMNS)]
    buffer = io.StringIO()
    per_object.drop(columns=mesh).to_csv(buffer, index=False, lineterminator="\n")
    report |= {
        "name": name,
        "sample": report["sample"] | {"feedback_start": feedback_start},
        "summary": {k: v for k, v in report["summary"].items() if k not in mesh},
        "reused_from": str(source),
    }
    report["protocol"]["mesh"] = "not computed (Table 3 windows compare depth points)"
    atomic_write_bytes(out_dir / "per_object.csv", buffer.getvalue().encode())
    for file in ("steps.csv", "steps.npz"):
        atomic_write_bytes(out_dir / file, (source / file).read_bytes())
    atomic_write_text(out_dir / "metrics.json", json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
