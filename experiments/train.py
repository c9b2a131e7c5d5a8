"""DVC stages `pretrain_*`, `train` and `train_variant`: the components' pretraining, then
every Table 2 model fine-tuned from them (the paper's own structure: SVD and LGM, then joint
fine-tuning with feedback).

  python experiments/train.py --pretrain denoiser        # F as plain multi-view diffusion
  python experiments/train.py --pretrain reconstructor   # G on ground-truth views
  python experiments/train.py --pretrain denoiser_continued --init models/pretrain   # F again, from the first
  python experiments/train.py --variant main --init models/pretrain   # Algorithm 1, fine-tuned
  accelerate launch --config_file configs/accelerate/cpu_2proc.yaml experiments/train.py ...  # N ranks

Writes the EMA weights and the resolved params to ``models/<name>/`` (``models/pretrain/<part>``
for pretraining) and the dvclive log to ``results/train/<name>/`` (``metrics.json``: final losses,
val scores and run facts for ``dvc exp show``; ``plots/metrics/{train,val}/*.tsv``: the curves
for ``dvc plots``, written as training goes; ``params.yaml``: the weights it started from). The rolling
checkpoint in ``checkpoints/<name>/<fingerprint>/`` persists across runs: re-running after a
kill resumes from it. The fingerprint covers the params and the weights training starts from.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from accelerate import PartialState

from ouroboros3d.build import build_model, initialise, training_fingerprint
from ouroboros3d.config import load_params
from ouroboros3d.config.params import PRETRAININGS
from ouroboros3d.data.dataset import MultiViewDataset
from ouroboros3d.errors import ArgumentParser, count, guard
from ouroboros3d.evaluation.metrics import object_seed
from ouroboros3d.evaluation.perceptual import load_lpips
from ouroboros3d.inference.pipeline import Ouroboros3DPipeline
from ouroboros3d.sampling import sample_kwargs
from ouroboros3d.training.batches import LOADER_WORKERS
from ouroboros3d.training.loop import train
from ouroboros3d.training.tracking import read_metrics
from ouroboros3d.training.validation import reconstruction_scores, stack_items, validation_scores


@guard
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--variant", default="main", help="main (the top-level params) or a name in params `variants`")
    what.add_argument("--pretrain", choices=tuple(PRETRAININGS), help="pretrain one component (params pretrain.<run>)")
    parser.add_argument(
        "--init", help="folder with the pretrained denoiser/ and reconstructor/ to fine-tune (or continue) from"
    )
    parser.add_argument("--init-denoiser", help="F's start instead of <init>/denoiser (a published continuation)")
    parser.add_argument("--data", default="data", help="the data/ folder of the render and ccm stages")
    parser.add_argument("--stop-after", type=int, help="stop after this many steps, writing no model (tests, probes)")
    parser.add_argument(
        "--loader-workers",
        type=count(0),
        default=LOADER_WORKERS,
        help=f"processes that read the batches ahead of the steps, per rank (default {LOADER_WORKERS}; "
        "0: read in the training process); changes no number",
    )
    args = parser.parse_args(argv)
    if args.init_denoiser and args.pretrain and PRETRAININGS[args.pretrain] != "denoiser":
        parser.error(f"--init-denoiser sets F's start, but --pretrain {args.pretrain} trains G alone")
    params = load_params(args.params)
    if args.pretrain:
        objective, settings = params.pretraining(args.pretrain)
        params = params.for_pretraining(objective)
        name, out = f"pretrain_{args.pretrain}", Path("models/pretrain") / args.pretrain
        init = {objective: Path(args.init) / objective if args.init else getattr(params.model, f"{objective}_init")}
    else:
        params = params.with_variant(args.variant)
        settings, objective = params.train, "joint"
        name, out = args.variant, Path("models") / args.variant
        init = {part: Path(args.init) / part if args.init else None for part in ("denoiser", "reconstructor")}
    if args.init_denoiser:
        init["denoiser"] = Path(args.init_denoiser)
    lpips = load_lpips() if settings.lpips_weight > 0 and objective != "denoiser" else None
    dataset = MultiViewDataset.for_split("train", args.data, params.ccm.normalization)
    torch.manual_seed(params.seed)
    model = build_model(params)
    initialise(model, params, init.get("denoiser"), init.get("reconstructor"))
    fingerprint = training_fingerprint(dataclasses.replace(params, train=settings), tuple(init.values()))

    torch.use_deterministic_algorithms(True, warn_only=True)
    val = MultiViewDataset.for_split("val", args.data, params.ccm.normalization)
    val_items = [val[i] for i in range(len(val))]
    val_batch = stack_items(val_items)
    val_seeds = [object_seed(params.seed, it["object_id"]) for it in val_items]

    def validate(m):  # G on the val views; else F with the params' sampler, G out of the loop
        if objective == "reconstructor":
            return reconstruction_scores(m, val_batch)
        return validation_scores(m, val_batch, val_seeds, sample_kwargs(params.sample))

    summary = train(
        model,
        dataset,
        settings,
        # one folder per fingerprint: experiments with other params never clobber it
        Path("checkpoints") / name / fingerprint,
        Path("results/train") / name,  # the dvclive log: metrics.json, plots/metrics/{train,val}/*.tsv
        seed=params.seed,
        fingerprint=fingerprint,
        lpips=lpips,
        objective=objective,
        validate=validate,
        validate_every=settings.validate_every,
        stop_after=args.stop_after,
        loader_workers=args.loader_workers,
        log_params={  # the log's params.yaml: what this run started from
            "init": {k: "none" if v is None else str(v) for k, v in init.items()},
            "objects": len(dataset),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
    )
    if not PartialState().is_main_process or not summary["finished"]:
        return 0  # under `accelerate launch`, rank 0 alone writes the model; a stopped run writes none
    summary.pop("ema").copy_to(model)
    log_dir = Path("results/train") / name
    run = {k: summary[k] for k in ("steps", "finished", "seconds", "settings")}
    run |= {
        "run": name,
        "objective": objective,
        "objects": len(dataset),
        "init": {k: v and str(v) for k, v in init.items()},
        "fingerprint": fingerprint,
    }
    run |= {"metrics": read_metrics(log_dir), "metrics_file": str(log_dir / "metrics.json")}
    Ouroboros3DPipeline.from_model(model, params).save_pretrained(out, training=run)
    print(f"trained {summary['steps']} steps in {summary['seconds']:.0f} s; final loss {summary['final_losses']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
