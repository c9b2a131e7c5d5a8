"""The learning study: what makes the denoiser F learn at laptop scale, measured on the val split.

    python benchmarks/learning_study.py noise    [--steps 300] [--runs mixture regression]
    python benchmarks/learning_study.py size     [--seconds 400] # model width at a fixed wall clock
    python benchmarks/learning_study.py mix      [--steps 500] [--runs share]  # the data mix, one lever per run
    python benchmarks/learning_study.py heldout  [--steps 500]  # procedural objects never trained on
    python benchmarks/learning_study.py finetune [--runs 600]   # Table 2's full and baseline: length, settings
    python benchmarks/learning_study.py sampling [--model models/pretrain/denoiser]
    python benchmarks/learning_study.py sampling-finetuned [--runs churn]  # Table 2's full and baseline
    python benchmarks/learning_study.py mean     [--model models/pretrain/denoiser] [--draws 4]
    python benchmarks/learning_study.py compare  --models A B [C ...]  # F of model folders, paired against A
    python benchmarks/learning_study.py figure   # results/study/*.csv -> paper/figures/study.png

Every number is on the validation split (objects neither trained on nor evaluated), through
:func:`ouroboros3d.training.validation.validation_scores`: the 1-step sample D(σ_max) (the
conditional mean), a full sample of plain multi-view diffusion (no G) and the trivial
baselines. ``noise`` and ``size`` pretrain F from scratch with the params' ``pretrain.denoiser``
settings, changing one thing; ``sampling`` sweeps guidance and sampler on fixed weights.
``sampling-finetuned`` sweeps sampler, steps and guidance on the weights Table 2 reads: the
``train`` stages' full model (``models/main``, the recursive loop with feedback) and baseline
(``models/baseline``), scored as ``evaluate.py --split val`` does (per object: views, 3D, 1-step).
``mean`` asks where the 1-step sample loses to copy-input: per object, in PSNR and in MSE,
one noise draw against the average of ``--draws`` draws (each D(σ_max · noise) estimates the
same conditional mean, so their spread is F's sensitivity to noise it should ignore).
``compare`` scores F of each ``--models`` folder per val object as the training's validation
does (1-step and sampled with the params' sampler, G out of the loop) and prints each one's
means and its paired lead over the first folder (95% t-interval); it writes no file.
``noise --runs`` re-runs only the named runs (a word of their label) and keeps the others' rows.
``mix`` changes one data-mix lever per run against the params' own mix, run beside them (the
textured scans: rendered into ``results/study/runs``, the rest of the split hard-linked): each
run follows the published schedule (its ``steps``, so the same constant learning rate) and
stops after ``--steps``; ``mix --runs`` as ``noise --runs``.
``heldout`` pretrains F with the params' mix less 100 procedural objects (pybullet_data has
1000, every one in the published F's training) and scores it on 20 of them, on 20 trained
ones and on the val split: "F has not learnt" against "what F learnt does not transfer".
``finetune`` fine-tunes the full model and the baseline (no joint training, no feedback) from the
published F and G for each setting and length of :data:`FINETUNE_SETTINGS`, exactly as the
``train`` stages do (their checkpoint folders, so a run the pipeline has trained resumes at its end), and
evaluates them on the val split as ``evaluate.py --split val`` does, always with the sampler
:data:`FINETUNE_SAMPLING` so rows of any date compare: per-object rows, so the full model's
paired lead over the baseline is read as in Table 2. A setting may add textured ``libero``
scans to the train split (``data.train.textured_objects``), rendered as the render stage would.
The ``regression`` run is the issue's regression reference: the same network trained only at
σ = σ_max, where the noisy input carries nothing and the EDM loss is plain MSE of D against
the views: its 1-step score is the conditional mean learnt by regression (its sampled
column means nothing: it never saw a lower σ).
Results go to ``results/study/<part>.csv`` (committed); ``figure`` draws them.
Run after ``dvc repro render ccm`` (it needs the rendered data). Takes minutes per run on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import math
import os
import re
import shutil
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ouroboros3d.build import build_model, initialise, training_fingerprint
from ouroboros3d.config import load_params
from ouroboros3d.data import layout
from ouroboros3d.data.ccm_stage import write_ccms
from ouroboros3d.data.dataset import MultiViewDataset
from ouroboros3d.data.render_stage import render_dataset
from ouroboros3d.data.splits import ORBIT_MARK, plan_objects
from ouroboros3d.diffusion import edm
from ouroboros3d.evaluation.evaluate import Evaluator, evaluate_objects
from ouroboros3d.evaluation.metrics import Unavailable, mean_ci, object_seed, psnr
from ouroboros3d.files import atomic_write_bytes
from ouroboros3d.inference.pipeline import Ouroboros3DPipeline
from ouroboros3d.reporting.study import finetune_leads, sampling_leads
from ouroboros3d.sampling import sample, sample_kwargs
from ouroboros3d.training.batches import real_objects
from ouroboros3d.training.loop import train
from ouroboros3d.training.tracking import read_curves
from ouroboros3d.training.validation import MIN_MSE, stack_items, validation_scores

OUT = Path("results/study")
# label -> sample overrides of the ``sampling-finetuned`` sweep, spelt out in full (sampler,
# steps, guidance) so a row keeps its meaning when params.yaml moves on
FINETUNED_SAMPLING = {
    f"{name} {steps}{', guidance ' + str(g) if g != 1.0 else ''}": {
        "sampler": sampler, "steps": steps, "guidance": (1.0, g)
    }
    for name, sampler, steps, g in [
        ("EDM stochastic (churn)", "euler_churn", 10, 1.0),
        ("EDM stochastic (churn)", "euler_churn", 5, 1.0),
        ("EDM stochastic (churn)", "euler_churn", 25, 1.0),
        ("Euler", "euler", 5, 1.0),
        ("Euler", "euler", 10, 1.0),
        ("Euler", "euler", 25, 1.0),
        ("EDM stochastic (churn)", "euler_churn", 10, 1.5),
    ]
}  # fmt: skip
# label -> pretrain settings changes: the pretraining's earlier setting, EDM2's pixel preset,
# the paper's, an even mixture of the first and the third, and the regression reference
# (ln sigma pinned at ln sigma_max: its p_mean is filled in by main)
NOISE = {
    "EDM N(-1.2, 1.2)": {"p_mean": -1.2, "p_std": 1.2},
    "EDM2 N(-0.8, 1.6)": {"p_mean": -0.8, "p_std": 1.6},
    "paper N(1.0, 1.6)": {"p_mean": 1.0, "p_std": 1.6},
    "mixture 1:1 of N(-1.2, 1.2) and N(1.0, 1.6)": {"p_mean": -1.2, "p_std": 1.2, "noise_mixture": (0.5, 1.0, 1.6)},
    "regression: σ = σ_max only": {"p_std": 1e-3},
}
# (label, guidance, guidance_sigmas, sampler, steps)
SAMPLING = [
    ("Euler 25, no guidance", (1.0, 1.0), None, "euler", 25),
    ("Euler 10, no guidance", (1.0, 1.0), None, "euler", 10),
    ("Euler 5, no guidance", (1.0, 1.0), None, "euler", 5),
    ("Euler 25, guidance 1.5", (1.0, 1.5), None, "euler", 25),
    ("Euler 25, guidance 2.5 (SVD)", (1.0, 2.5), None, "euler", 25),
    ("Euler 25, guidance 2.5 for σ in [0.3, 5]", (1.0, 2.5), (0.3, 5.0), "euler", 25),
    ("Heun 12, no guidance", (1.0, 1.0), None, "heun", 12),
    ("Heun 18, no guidance", (1.0, 1.0), None, "heun", 18),
    ("EDM stochastic (churn) 10, no guidance", (1.0, 1.0), None, "euler_churn", 10),
    ("EDM stochastic (churn) 25, no guidance", (1.0, 1.0), None, "euler_churn", 25),
]
# label -> (pretrain.denoiser changes, orbits kept per real training object (None: all rendered),
# textured libero shapes added to the real scans). Keeping the first k orbits is exactly what
# rendering with data.train.real_orbits = k gives: each orbit's elevation and azimuth are drawn
# from its own id (<object>~orbit<k>). 11 of the 21 shapes leave 10 for data.eval_textured.
MIX = {
    "real share: the split's own (31%)": ({"real_share": None}, None, 0),
    "real share 0.75": ({"real_share": 0.75}, None, 0),
    "8 orbits per real object": ({}, 8, 0),
    "textured scans: 11 libero shapes (24 scans) beside the YCB ones": ({}, None, 11),
}
# the heldout run: procedural objects (of pybullet_data's 1000, all in the published F's training)
# left out of training, and how many objects of each set it scores
HELD_OUT, HELD_OUT_SCORED = 100, 20
FINETUNE_VARIANTS = {"full": "main", "baseline": "baseline"}  # label -> the train stage's variant
# where the fine-tunes start: G's publication, and F's first or its continuation (the train stages')
FIRST_F, CONTINUED_F = Path("models/pretrain/denoiser"), Path("models/pretrain/denoiser_continued")
PRETRAINED_G = Path("models/pretrain/reconstructor")
# setting -> (the train params it sets over params.yaml's, fine-tune lengths, F's start, textured
# libero shapes in the train split: data.train.textured_objects). Spelt out in full, so a row
# keeps its meaning when params.yaml moves on. The first was params.yaml's until 2026-12-05 (300
# steps until 2026-12-04); at 600 steps the eval views lost ~0.3 dB, so a gentler step, and the
# mix study's best real share (params.yaml's since 2026-12-05); then the same from F's second
# publication (the train stages' since 2026-12-05, late); then with the textured scans beside.
FINETUNE_SETTINGS = {
    "lr 0.0002, real share 0.5": ({"lr": 2e-4, "real_share": 0.5}, (300, 600), FIRST_F, 0),
    "lr 0.0001, real share 0.5": ({"lr": 1e-4, "real_share": 0.5}, (600,), FIRST_F, 0),
    "lr 0.0002, real share 0.75": ({"lr": 2e-4, "real_share": 0.75}, (600,), FIRST_F, 0),
    "lr 0.0002, real share 0.75, F continued": ({"lr": 2e-4, "real_share": 0.75}, (600,), CONTINUED_F, 0),
    "lr 0.0002, real share 0.75, F continued, 11 textured shapes": (
        {"lr": 2e-4, "real_share": 0.75}, (600,), CONTINUED_F, 11
    ),
}  # fmt: skip
# the sampling every finetune row is scored with (params.yaml's until 2026-12-05), so that rows
# of any date compare; ``sampling-finetuned`` sweeps the others on the train stages' models
FINETUNE_SAMPLING = "EDM stochastic (churn) 10"
FINETUNE_COLUMNS = ("mv_psnr", "3d_psnr", "x0_psnr", "copy_input_psnr", "white_psnr")


def _runs(parser: argparse.ArgumentParser, labels: list[str], words: list[str] | None) -> list[str]:
    """The labels holding one of ``words`` (all: no words); a one-line error (exit 2) when none does."""
    chosen = [k for k in labels if not words or any(w.lower() in k.lower() for w in words)]
    if not chosen:
        parser.error(f"--runs {' '.join(words)} matches none of: {'; '.join(labels)}")
    return chosen


def _keep_others(df: pd.DataFrame, path: Path, labels: list[str], column: str = "run") -> None:
    """Write ``df`` to ``path`` with the rows of the runs (named in ``column``) it did not re-run,
    in ``labels``' order."""
    if path.exists():
        old = pd.read_csv(path)
        df = pd.concat([old[~old[column].isin(df[column])], df])
        df = df.sort_values(column, key=lambda s: s.map(labels.index), kind="stable")
    _csv(df, path)


def _csv(df: pd.DataFrame, path: Path) -> None:
    buffer = io.StringIO()
    df.to_csv(buffer, index=False, lineterminator="\n", float_format="%.4f")
    atomic_write_bytes(path, buffer.getvalue().encode())


def _val(params, data: str):
    """The val split as one batch, and each object's noise seed (as the training's validation)."""
    val = MultiViewDataset.for_split("val", data, params.ccm.normalization)
    return _batch(val, val.object_ids, params)


def _pretrained_f(params, folder: str):
    """F (plain multi-view diffusion, no feedback) with the weights of the model folder ``folder``."""
    plain = dataclasses.replace(params, feedback=False)
    torch.manual_seed(params.seed)
    model = build_model(plain)
    initialise(model, plain, folder, None)
    return model


def _scores(model, val, params, **kw) -> dict:
    """Scores with the params' sampler, overridden by ``kw`` (steps, guidance, sampler name, ...)."""
    if "sampler" in kw:
        kw["sampler"] = edm.SAMPLERS[kw["sampler"]]
    return validation_scores(model, *val, sample_kwargs(params.sample, **kw))


def first_orbits(object_ids: list[str], orbits: int) -> list[str]:
    """The ids of a train split rendered with ``orbits`` orbits per real object instead of more."""
    return [o for o in object_ids if ORBIT_MARK not in o or int(o.split(ORBIT_MARK)[1]) < orbits]


_PREPARED: set[tuple[str, Path]] = set()  # (source data, folder) made by this process: one per shape count


def _textured_data(data: str, params) -> str:
    """A data folder whose train split is the render and ccm stages' with ``params``' textured
    scans (``data.train.textured_objects``): ``data``'s rendered objects hard-linked, the scans
    rendered, every CCM written; once per process (``finetune`` asks for it once per model)."""
    root = OUT / "runs" / f"data_textured_{params.data.train.textured_objects}"
    if (data, root) in _PREPARED:
        return str(root)
    renders = root / "renders"
    if not (renders / layout.MANIFEST_FILE).is_file():  # linked whole before the manifest marks it done
        shutil.rmtree(renders, ignore_errors=True)
        shutil.copytree(Path(data) / "renders" / "train", renders / "train", copy_function=os.link)
        shutil.copy(Path(data) / "renders" / layout.MANIFEST_FILE, renders / layout.MANIFEST_FILE)
    render_dataset(params, renders, splits=("train",), resume=True)  # renders only what is new
    write_ccms(renders, root / "ccm", params.ccm.normalization, ("train",))
    _PREPARED.add((data, root))
    return str(root)


def _train_set(data: str, params, orbits: int | None) -> MultiViewDataset:
    """The train split, with only the first ``orbits`` orbits of each real object (None: all)."""
    if params.data.train.textured_objects:
        data = _textured_data(data, params)
    full = MultiViewDataset.for_split("train", data, params.ccm.normalization)
    ids = _train_ids(full.object_ids if orbits is None else first_orbits(full.object_ids, orbits), params)
    if ids == full.object_ids:
        return full
    return MultiViewDataset(full.renders_dir, full.ccm_dir, params.ccm.normalization, ids)


def _train_ids(object_ids: list[str], params) -> list[str]:
    """``object_ids`` less the procedural objects a render with ``params``' smaller
    ``data.train.max_objects`` would not plan (the real scans all stay)."""
    real = real_objects(object_ids)
    if real.count(False) <= params.data.train.max_objects:
        return object_ids
    kept = {o.object_id for o in plan_objects(params, "train")}
    return [i for i, is_real in zip(object_ids, real, strict=True) if is_real or i in kept]


def heldout_run(params, data: str, steps: int, scored: int) -> pd.DataFrame:
    """F pretrained from scratch with the params' mix less :data:`HELD_OUT` procedural objects,
    stopped after ``steps``; scored every ``validate_every`` steps on the val split, on ``scored``
    of the held-out procedural objects and on ``scored`` trained ones: one row per set and step."""
    train = dataclasses.replace(params.data.train, max_objects=params.data.train.max_objects - HELD_OUT)
    run = dataclasses.replace(params, data=dataclasses.replace(params.data, train=train))
    rendered = MultiViewDataset.for_split("train", data, params.ccm.normalization)
    trained = set(_train_ids(rendered.object_ids, run))
    procedural = [i for i, is_real in zip(rendered.object_ids, real_objects(rendered.object_ids), strict=True)
                  if not is_real]  # fmt: skip
    sets = {  # name -> (batch, seeds)
        "val (YCB)": _val(params, data),
        "held-out procedural": _batch(rendered, [i for i in procedural if i not in trained][:scored], params),
        "trained procedural": _batch(rendered, [i for i in procedural if i in trained][:scored], params),
    }
    keys = {name: re.sub(r"\W+", "_", name).strip("_").lower() for name in sets}

    def score(model, p):
        return {f"{keys[n]}_{k}": v for n, b in sets.items() for k, v in _scores(model, b, p).items()}

    every = params.pretrain.denoiser.validate_every
    label = f"params' mix less {HELD_OUT} procedural objects"
    curve = pretrain_runs(params, [(label, run, {})], data, every, stop_after=steps, score=score)
    rows = []
    for record in curve.to_dict("records"):
        for name, key in keys.items():
            scores = {k.removeprefix(f"{key}_"): v for k, v in record.items() if k.startswith(f"{key}_")}
            rows.append({"objects": name, "step": record["step"]} | scores)
    return pd.DataFrame(rows)


def _batch(dataset: MultiViewDataset, object_ids: list[str], params):
    """The objects ``object_ids`` of ``dataset`` as one batch and their noise seeds, as :func:`_val`."""
    items = [dataset[dataset.object_ids.index(i)] for i in object_ids]
    return stack_items(items), [object_seed(params.seed, it["object_id"]) for it in items]


def pretrain_runs(
    params,
    runs: list[tuple],
    data: str,
    every: int,
    seconds: float | None = None,
    stop_after: int | None = None,
    score=None,
):
    """Pretrain F from scratch once per (label, params, settings changes[, real orbits kept]); val
    scores (or ``score(model, params)``'s) every ``every`` steps; each run ends at its ``steps``,
    after ``seconds`` or after ``stop_after`` steps."""
    if score is None:
        batch = _val(params, data)
        score = lambda m, p: _scores(m, batch, p)  # noqa: E731
    rows = []
    for label, run_params, changes, *orbits in runs:
        train_set = _train_set(data, run_params, orbits[0] if orbits else None)
        settings = dataclasses.replace(run_params.pretrain.denoiser, validate_every=every, **changes)
        torch.manual_seed(run_params.seed)
        model = build_model(dataclasses.replace(run_params, feedback=False))
        folder = OUT / "runs" / re.sub(r"\W+", "_", label).strip("_").lower()  # one folder per run
        t0 = time.perf_counter()
        deadline = None if seconds is None else t0 + seconds

        def stop(step, values, deadline=deadline):
            if (deadline is not None and time.perf_counter() > deadline) or (stop_after and step >= stop_after):
                raise TimeoutError

        try:
            train(
                model, train_set, settings, folder / "ckpt", folder / "log", seed=run_params.seed,
                fingerprint=label, objective="denoiser", on_step=stop, validate_every=every,
                validate=lambda m, p=run_params: score(m, p),
            )  # fmt: skip
        except TimeoutError:
            pass
        curve = read_curves(folder / "log", "val")  # the run's dvclive validation curve
        params_count = sum(p.numel() for p in model.denoiser.parameters())
        rows += [r | {"run": label, "parameters": params_count} for r in curve.to_dict("records")]
        print(f"{label}: {curve.iloc[-1].to_dict()} ({time.perf_counter() - t0:.0f} s)")
    return pd.DataFrame(rows)


def data_mix(params, data: str, steps: int, chosen: list[str]) -> pd.DataFrame:
    """The ``chosen`` runs of :func:`mix_runs`, each stopped after ``steps`` of the published schedule."""
    runs = [run for run in mix_runs(params) if run[0] in chosen]
    return pretrain_runs(params, runs, data, params.pretrain.denoiser.validate_every, stop_after=steps)


def mix_runs(params) -> list[tuple]:
    """The params' own mix (the published pretraining's, re-run here: a curve made on another CPU
    is no reference, float32 kernels differ and training amplifies it), then :data:`MIX`."""
    mix = params.pretrain.denoiser
    reference = f"params: real share {mix.real_share}, {params.data.train.real_orbits} orbits per real object"
    return [(reference, params, {}, None)] + [
        (label, _with_textured(params, textured), changes, orbits) for label, (changes, orbits, textured) in MIX.items()
    ]


def _with_textured(params, shapes: int):
    """``params`` training on ``shapes`` textured libero shapes as well (data.train.textured_objects)."""
    train = dataclasses.replace(params.data.train, textured_objects=shapes)
    return dataclasses.replace(params, data=dataclasses.replace(params.data, train=train))


def finetune_runs(params, data: str, chosen: list[str]) -> pd.DataFrame:
    """Each ``chosen`` run (label "<variant>, <steps> steps, <setting>") fine-tuned as the train
    stage would (resuming its checkpoint folder) and scored on the val split: one row per object."""
    val = MultiViewDataset.for_split("val", data, params.ccm.normalization)
    rows = []
    for label, variant, steps, setting in finetune_labels():
        if label not in chosen:
            continue
        changes, _, denoiser, textured = FINETUNE_SETTINGS[setting]
        run = _with_textured(params.with_variant(variant), textured)
        train_data = _textured_data(data, run) if textured else data
        dataset = MultiViewDataset.for_split("train", train_data, params.ccm.normalization)
        starts = (denoiser, PRETRAINED_G)
        changes = changes | {"steps": steps}
        run = dataclasses.replace(run, train=dataclasses.replace(run.train, **changes))
        fingerprint = training_fingerprint(run, starts)  # the train stage's: its checkpoint resumes
        torch.manual_seed(run.seed)
        model = build_model(run)
        initialise(model, run, *starts)
        torch.use_deterministic_algorithms(True, warn_only=True)
        summary = train(
            model, dataset, run.train, Path("checkpoints") / variant / fingerprint,
            OUT / "runs" / re.sub(r"\W+", "_", label).strip("_").lower(), seed=run.seed, fingerprint=fingerprint,
        )  # fmt: skip
        summary["ema"].copy_to(model)
        scored, _ = _val_rows(model.eval(), run, _sampling(run, FINETUNE_SAMPLING), val, label)
        rows += [{"run": label, "setting": setting, "steps": steps} | r for r in scored]
    return pd.DataFrame(rows)


def _val_rows(model, params, kwargs: dict, val: MultiViewDataset, desc: str) -> tuple[list[dict], float]:
    """``model`` on every val object as ``evaluate.py --split val`` scores it, sampled with
    ``kwargs``: per object its id and :data:`FINETUNE_COLUMNS`; and the wall time in seconds."""
    evaluator = Evaluator(
        model, params, kwargs, lpips=None, inception=Unavailable("FID is not part of the study"), record=set(),
        device="cpu", mesh=False,
    )  # fmt: skip
    scored, seconds = evaluate_objects(
        evaluator, val, val.object_ids, params.evaluation.batch_size, seed=params.seed, desc=desc, progress=True
    )
    return [{"object_id": r["object_id"]} | {c: r[c] for c in FINETUNE_COLUMNS} for r in scored], seconds


def finetune_labels() -> list[tuple[str, str, int, str]]:
    """(label "<model>, <steps> steps, <setting>", train stage variant, steps, setting) of every
    ``finetune`` run: each setting of :data:`FINETUNE_SETTINGS` at each of its lengths."""
    return [
        (f"{name}, {steps} steps, {setting}", variant, steps, setting)
        for setting, (_, lengths, *_) in FINETUNE_SETTINGS.items()
        for steps in lengths
        for name, variant in FINETUNE_VARIANTS.items()
    ]


def _sampling(params, label: str) -> dict:
    """The sampler kwargs of the :data:`FINETUNED_SAMPLING` setting ``label``, as evaluate.py samples."""
    setting = FINETUNED_SAMPLING[label]
    return sample_kwargs(
        params.sample, **setting | {"sampler": edm.SAMPLERS[setting["sampler"]], "reconstruct": "every_step"}
    )


def finetuned_sampling(params, data: str, chosen: list[str], models: Path = Path("models")) -> pd.DataFrame:
    """Table 2's full model and baseline (the ``train`` stages' weights under ``models``) sampled
    on the val split with each ``chosen`` setting of :data:`FINETUNED_SAMPLING`: one row per object."""
    val = MultiViewDataset.for_split("val", data, params.ccm.normalization)
    rows = []
    for name, variant in FINETUNE_VARIANTS.items():
        model = Ouroboros3DPipeline.from_pretrained(models / variant).model
        for label in chosen:
            scored, seconds = _val_rows(model, params, _sampling(params, label), val, f"{name}: {label}")
            rows += [{"model": name, "setting": label} | r | {"seconds": seconds} for r in scored]
    return pd.DataFrame(rows)


def conditional_mean(model, val, params, draws: int) -> pd.DataFrame:
    """Per val object: PSNR and MSE (non-input views) of copy-input, of the 1-step sample with
    the object's own seed (the validation's ``x0_psnr``) and of the mean of ``draws`` of them."""
    batch, seeds = val
    kw = sample_kwargs(params.sample) | {"reconstruct": "none", "steps": 1, "guidance": (1.0, 1.0)}
    args = (model, batch["input_view"], batch["K"], batch["c2w"])
    with torch.no_grad():
        x0 = [sample(*args, **kw, seeds=[s + 7919 * k for s in seeds]).views[:, 1:] for k in range(draws)]
    target = batch["views"][:, 1:]
    preds = {
        "copy-input": batch["input_view"][:, None].expand_as(target),
        "1-step sample": x0[0],
        f"mean of {draws} 1-step samples": torch.stack(x0).mean(0),
    }
    rows = []
    for name, pred in preds.items():
        scores = psnr(pred, target, min_mse=MIN_MSE).mean(1)  # the validation's arithmetic
        mse = ((pred.clamp(0, 1) - target) ** 2).mean(dim=(1, 2, 3, 4))
        rows += [
            {"prediction": name, "object": i, "psnr": s.item(), "mse": m.item()}
            for i, (s, m) in enumerate(zip(scores, mse, strict=True))
        ]
    return pd.DataFrame(rows)


def compare_models(params, data: str, folders: list[str]) -> pd.DataFrame:
    """F of each model folder on every val object, scored as the training's validation scores it
    (``x0_psnr``: the 1-step sample; ``mv_psnr``: sampled with the params' sampler; G out of the
    loop): one row per folder and object."""
    batch, seeds = _val(params, data)
    kw = sample_kwargs(params.sample) | {"reconstruct": "none", "seeds": seeds}
    target = batch["views"][:, 1:]
    rows = []
    for folder in folders:
        model = _pretrained_f(params, folder).eval()
        args = (model, batch["input_view"], batch["K"], batch["c2w"])
        with torch.no_grad():
            x0 = sample(*args, **kw | {"steps": 1, "guidance": (1.0, 1.0)}).views[:, 1:]
            views = sample(*args, **kw).views[:, 1:]
        scores = {k: psnr(v, target, min_mse=MIN_MSE).mean(1) for k, v in (("x0_psnr", x0), ("mv_psnr", views))}
        for i in range(len(seeds)):
            rows.append({"model": folder, "object": i} | {k: v[i].item() for k, v in scores.items()})
    return pd.DataFrame(rows)


def figure() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = {p.stem: pd.read_csv(p) for p in sorted(OUT.glob("*.csv"))}
    curves = [k for k in ("noise", "size", "mix") if k in parts]
    drawn = ("finetune", "sampling", "sampling_finetuned", "heldout")
    panels = len(curves) + sum(part in parts for part in drawn)
    columns = min(panels, 3)
    rows = math.ceil(panels / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4.2 * rows), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    free = iter(axes.flat)  # each part below takes the next panel, in the order drawn
    for part in curves:
        ax, df = next(free), parts[part]
        wrap = functools.partial(textwrap.fill, width=48)  # long run names stay inside the panel
        for run, g in df.groupby("run", sort=False):
            (line,) = ax.plot(g["step"], g["mv_psnr"], "o-", label=wrap(f"{run}: sampled"))
            ax.plot(g["step"], g["x0_psnr"], "s--", color=line.get_color(), alpha=0.6, label=wrap(f"{run}: 1-step"))
        ax.axhline(df["copy_input_psnr"].iloc[0], color="k", ls="--", lw=1, label="copy input view")
        ax.axhline(df["white_psnr"].iloc[0], color="grey", ls=":", lw=1, label="white image")
        ax.set(title=f"F pretraining: {part}", xlabel="training step", ylabel="val PSNR, non-input views (dB)")
        ax.legend(fontsize=6)
    if "finetune" in parts:
        ax = next(free)
        df = parts["finetune"].assign(model=lambda d: d["run"].str.split(",").str[0])
        keys = ["setting", "model", "steps"]
        means = df.groupby(keys, sort=False)[list(FINETUNE_COLUMNS)].mean().reset_index()
        settings = list(means["setting"].unique())
        for (setting, model), g in means.groupby(["setting", "model"], sort=False):
            colour, marker = f"C{list(FINETUNE_VARIANTS).index(model)}", "os^v<>"[settings.index(setting) % 6]
            style = {"color": colour, "marker": marker}
            ax.plot(g["steps"], g["3d_psnr"], "-", **style, label=f"{model}, {setting}")
            ax.plot(g["steps"], g["mv_psnr"], "--", mfc="none", alpha=0.6, **style)
        ax.axhline(means["copy_input_psnr"].iloc[0], color="k", ls="--", lw=1, label="copy input view")
        ax.set(title="Table 2 fine-tunes (filled: 3D, hollow: views)", xlabel="fine-tune steps")
        ax.set_ylabel("val PSNR, non-input views (dB)")
        ax.set_xticks(sorted(means["steps"].unique()))
        low = min(means["copy_input_psnr"].min(), means[["3d_psnr", "mv_psnr"]].min().min())
        ax.set_ylim(low - 1.0, means[["3d_psnr", "mv_psnr"]].max().max() + 0.1)  # room for the legend below
        ax.legend(fontsize=6, loc="lower center")
    if "sampling_finetuned" in parts:
        ax = next(free)
        df = parts["sampling_finetuned"]
        means = df.groupby(["setting", "model"], sort=False)[["3d_psnr", "mv_psnr"]].mean()
        settings = list(df["setting"].unique())
        for k, model in enumerate(FINETUNE_VARIANTS):
            ys = [y + 0.4 * k - 0.2 for y in range(len(settings))]
            m = means.xs(model, level="model").reindex(settings)
            ax.barh(ys, m["3d_psnr"], height=0.4, color=f"C{k}", label=f"{model}: 3D")
            ax.plot(m["mv_psnr"], ys, "o", mfc="none", color="k", ms=4, label="views" if k else None)
        ax.axvline(df["copy_input_psnr"].mean(), color="k", ls="--", lw=1, label="copy input view")
        ax.set_yticks(range(len(settings)), settings, fontsize=7)
        ax.set(title="sampling the fine-tuned models", xlabel="val PSNR, non-input views (dB)")
        ax.set_xlim(df["copy_input_psnr"].mean() - 1, means.max().max() + 0.3)
        ax.legend(fontsize=6, loc="upper left")  # over the bars' bodies, not their ends
    if "heldout" in parts:
        ax = next(free)
        df = parts["heldout"]
        last = df[df["step"] == df["step"].max()].set_index("objects")
        bars = {"copy input view": "copy_input_psnr", "1-step": "x0_psnr", "sampled": "mv_psnr"}
        for k, (label, column) in enumerate(bars.items()):
            ys = [y + 0.27 * (k - 1) for y in range(len(last))]
            ax.barh(ys, last[column], height=0.27, color="0.6" if k == 0 else f"C{k - 1}", label=label)
        ax.set_yticks(range(len(last)), last.index, fontsize=7)
        ax.set(title=f"held out of training, step {int(df['step'].max())}", xlabel="PSNR, non-input views (dB)")
        ax.set_xlim(left=last[list(bars.values())].min().min() - 1)
        ax.legend(fontsize=6)
    if "sampling" in parts:
        df = parts["sampling"]
        ax = next(free)
        ax.barh(df["setting"], df["mv_psnr"])
        ax.axvline(df["copy_input_psnr"].iloc[0], color="k", ls="--", lw=1)
        ax.axvline(df["white_psnr"].iloc[0], color="grey", ls=":", lw=1)
        ax.set(title="sampling settings, same weights", xlabel="val MV PSNR (dB)")
        ax.set_xlim(left=min(df["white_psnr"].iloc[0], df["mv_psnr"].min()) - 1)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130, metadata={"Software": None})
    atomic_write_bytes(Path("paper/figures/study.png"), buffer.getvalue())
    print("wrote paper/figures/study.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "part",
        choices=(
            "noise", "size", "mix", "heldout", "finetune", "sampling", "sampling-finetuned", "mean", "compare", "figure"
        ),
    )  # fmt: skip
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data")
    parser.add_argument(
        "--steps",
        type=int,
        help="noise: pretraining steps per run (default 300); mix, heldout: steps before each run stops (default 500)",
    )
    parser.add_argument("--seconds", type=float, default=400, help="size: wall-clock budget per run")
    parser.add_argument(
        "--runs",
        nargs="*",
        help="noise, mix, finetune, sampling-finetuned: re-run only runs whose label contains one of these words",
    )
    parser.add_argument("--model", default="models/pretrain/denoiser", help="sampling, mean: the weights")
    parser.add_argument("--draws", type=int, default=4, help="mean: 1-step samples averaged per object")
    parser.add_argument("--models", nargs="+", default=[], help="compare: model folders, the first the reference")
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error(f"--draws must be >= 1, got {args.draws}")  # one line, exit 2
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    params = load_params(args.params)
    if args.part == "figure":
        figure()
        return 0
    if args.part == "noise":
        pinned = {"p_mean": math.log(params.sample.sigma_max)}  # the regression run's
        chosen = _runs(parser, list(NOISE), args.runs)
        steps = args.steps or 300
        runs = [(k, params, ({} if "p_mean" in NOISE[k] else pinned) | NOISE[k] | {"steps": steps}) for k in chosen]
        _keep_others(pretrain_runs(params, runs, args.data, max(1, steps // 3)), OUT / "noise.csv", list(NOISE))
    elif args.part == "size":
        # diffusers' ResNet blocks use GroupNorm(32): every width stays a multiple of 32; the
        # heads keep the default's 32 channels each
        narrow = dataclasses.replace(
            params.model.denoiser,
            block_out_channels=(32, 32, 64, 64),
            num_attention_heads=(1, 1, 2, 2),
            image_encoder_channels=(8, 16, 32, 64),
        )
        narrow.validate("model.denoiser")  # a clear error, not a crash inside diffusers
        half = dataclasses.replace(params, model=dataclasses.replace(params.model, denoiser=narrow))
        forever = {"steps": 10**6}  # stopped by the wall clock
        runs = [("width (32, 64, 96, 128)", params, forever), ("width (32, 32, 64, 64)", half, forever)]
        # scored every 50 steps: the last score lands near the deadline
        _csv(pretrain_runs(params, runs, args.data, 50, args.seconds), OUT / "size.csv")
    elif args.part == "mix":
        labels = [run[0] for run in mix_runs(params)]
        _keep_others(
            data_mix(params, args.data, args.steps or 500, _runs(parser, labels, args.runs)), OUT / "mix.csv", labels
        )
    elif args.part == "heldout":
        _csv(heldout_run(params, args.data, args.steps or 500, HELD_OUT_SCORED), OUT / "heldout.csv")
    elif args.part == "finetune":
        labels = [label for label, *_ in finetune_labels()]
        path = OUT / "finetune.csv"
        for label in _runs(parser, labels, args.runs):  # written run by run: a later run's crash loses no score
            _keep_others(finetune_runs(params, args.data, [label]), path, labels)
        print(finetune_leads(pd.read_csv(path)).to_string(index=False, float_format="%.3f"))
    elif args.part == "sampling-finetuned":
        labels = list(FINETUNED_SAMPLING)
        df = finetuned_sampling(params, args.data, _runs(parser, labels, args.runs))
        _keep_others(df, OUT / "sampling_finetuned.csv", labels, column="setting")
        print(sampling_leads(pd.read_csv(OUT / "sampling_finetuned.csv")).to_string(index=False, float_format="%.3f"))
    elif args.part == "compare":
        if len(args.models) < 2:
            parser.error("compare needs --models with at least two folders")  # one line, exit 2
        df = compare_models(params, args.data, args.models)
        reference = df[df["model"] == args.models[0]].set_index("object")
        for folder, g in df.groupby("model", sort=False):
            line = [f"{folder}:"]
            for column in ("x0_psnr", "mv_psnr"):
                line.append(f"{column} {g[column].mean():.2f}")
                if folder != args.models[0]:
                    lead = mean_ci(g.set_index("object")[column] - reference[column])
                    line.append(f"({lead['mean']:+.2f} [{lead['ci_low']:+.2f}, {lead['ci_high']:+.2f}])")
            print(" ".join(line))
    elif args.part == "mean":
        model = _pretrained_f(params, args.model)
        df = conditional_mean(model.eval(), _val(params, args.data), params, args.draws)
        _csv(df, OUT / "mean.csv")
        summary = df.groupby("prediction", sort=False).agg(psnr=("psnr", "mean"), mse=("mse", "mean"))
        print(summary.assign(psnr_of_mean_mse=-10 * np.log10(summary["mse"])).to_string())
    else:
        model = _pretrained_f(params, args.model)
        batch = _val(params, args.data)
        rows = []
        for label, guidance, interval, sampler, steps in SAMPLING:
            t0 = time.perf_counter()
            scores = _scores(model, batch, params, steps=steps, guidance=guidance, guidance_sigmas=interval,
                             sampler=sampler)  # fmt: skip
            rows.append({"setting": label} | scores | {"seconds": time.perf_counter() - t0})
            print(rows[-1])
        _csv(pd.DataFrame(rows), OUT / "sampling.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
