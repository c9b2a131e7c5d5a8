"""benchmarks/learning_study.py: the data-mix runs (fewer orbits per real object, taken from the
rendered split), the fine-tune runs (the train stage's training, evaluate.py's val scores) and
the sampling sweep on the fine-tuned models (evaluate.py's val scores under other samplers)."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import trimesh
import yaml
from conftest import ROOT, load_script, tiny_params, tiny_raw

from ouroboros3d.build import build_model
from ouroboros3d.config import load_params, params_from_dict
from ouroboros3d.data import render_dataset, write_ccms
from ouroboros3d.data.render_stage import real_training_objects
from ouroboros3d.inference.pipeline import Ouroboros3DPipeline


def load_study():
    spec = importlib.util.spec_from_file_location("learning_study", ROOT / "benchmarks" / "learning_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _with_orbits(params, orbits: int):
    train = dataclasses.replace(params.data.train, real_objects=2, real_orbits=orbits)
    return dataclasses.replace(params, data=dataclasses.replace(params.data, train=train))


def test_keeping_the_first_orbits_is_rendering_fewer():
    """The ids kept from a 4-orbit split are those a 2-orbit render plans (each orbit's camera is
    drawn from its own id, so the kept objects are the same renders), and every procedural object stays."""
    study = load_study()
    params = tiny_params()
    procedural = ["random_urdfs-000", "random_urdfs-007"]
    rendered = procedural + [o.object_id for o in real_training_objects(_with_orbits(params, 4))]
    fewer = {o.object_id for o in real_training_objects(_with_orbits(params, 2))}
    assert len(rendered) == 2 + 2 * 4 and len(fewer) == 2 * 2
    assert study.first_orbits(rendered, 2) == procedural + sorted(fewer, key=rendered.index)
    assert study.first_orbits(rendered, 4) == rendered


def test_a_step_count_below_one_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        load_study().main(["mix", "--steps", "0"])
    assert exit_.value.code == 2
    assert "--steps must be >= 1, got 0" in capsys.readouterr().err


def test_runs_matching_nothing_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        load_study().main(["finetune", "--runs", "no-such-run"])
    assert exit_.value.code == 2
    assert "--runs no-such-run matches none of: full, 300 steps, lr 0.0002, real share 0.5;" in capsys.readouterr().err


def test_a_finetune_setting_changes_only_its_train_params(monkeypatch):
    """Each setting of FINETUNE_SETTINGS runs at each of its lengths with params.yaml's train
    section changed where the setting says and nowhere else, each in its own checkpoint folder."""
    study = load_study()
    params = tiny_params()
    seen = {}

    class Stop(Exception):
        pass

    def train(model, dataset, config, folder, *args, **kwargs):
        seen[folder.parent.name] = (config, folder.name)
        raise Stop

    monkeypatch.setattr(study, "train", train)
    monkeypatch.setattr(study.MultiViewDataset, "for_split", staticmethod(lambda *a, **k: None))
    monkeypatch.setattr(study, "initialise", lambda *a, **k: None)
    monkeypatch.setattr(study, "_textured_data", lambda data, params: data)
    folders = set()
    for setting, (changes, lengths, *_) in study.FINETUNE_SETTINGS.items():
        for steps in lengths:
            label = f"baseline, {steps} steps, {setting}"
            assert (label, "baseline", steps, setting) in study.finetune_labels()
            with pytest.raises(Stop):
                study.finetune_runs(params, "data", [label])
            config, fingerprint = seen["baseline"]
            assert config == dataclasses.replace(params.with_variant("baseline").train, steps=steps, **changes)
            folders.add(fingerprint)
    assert len(folders) == len(study.finetune_labels()) // 2
    assert study.FINETUNE_SAMPLING in study.FINETUNED_SAMPLING  # every row's sampler, spelt out


def test_a_finetune_run_is_the_train_stage_scored_as_evaluate_scores_val(tmp_path, monkeypatch, capsys):
    """The study's full model, fine-tuned after train.py has trained it, resumes train.py's
    checkpoint at its end and scores every val object exactly as ``evaluate.py --split val``."""
    torch.set_num_threads(1)
    (tmp_path / "meshes").mkdir()
    for k in range(2):
        trimesh.creation.box(extents=(1.0, 0.4 + 0.2 * k, 0.3)).export(tmp_path / "meshes" / f"box{k}.obj")
    raw = tiny_raw(
        data={"folder": str(tmp_path / "meshes"), "workers": 1, "train": {"source": "folder", "real_objects": 0}},
        sample={"steps": 2},
        evaluation={"batch_size": 2},
        train={"real_share": None},  # the split's own share: these boxes are all "real"
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = params_from_dict(raw)
    render_dataset(params, tmp_path / "data" / "renders", splits=("train",), progress=False)
    shutil.copytree(tmp_path / "data" / "renders" / "train", tmp_path / "data" / "renders" / "val")
    write_ccms(tmp_path / "data" / "renders", tmp_path / "data" / "ccm", params.ccm.normalization, ("train",), False)
    torch.manual_seed(0)
    pretrained = Ouroboros3DPipeline.from_model(build_model(params), params)
    for part in ("denoiser", "reconstructor"):
        pretrained.save_pretrained(tmp_path / "models" / "pretrain" / part)
    monkeypatch.chdir(tmp_path)
    assert load_script("train").main(["--variant", "main", "--init", "models/pretrain", "--loader-workers", "0"]) == 0
    evaluate = ["--variant", "main", "--split", "val", "--out", "val", "--record-steps", "0", "--no-progress"]
    assert load_script("evaluate").main(evaluate) == 0
    capsys.readouterr()

    study = load_study()
    monkeypatch.setattr(study, "FINETUNE_SETTINGS", {"params.yaml's": ({}, (params.train.steps,), study.FIRST_F, 0)})
    own = {"sampler": params.sample.sampler, "steps": params.sample.steps, "guidance": tuple(params.sample.guidance)}
    monkeypatch.setattr(study, "FINETUNED_SAMPLING", {"params.yaml's": own})
    monkeypatch.setattr(study, "FINETUNE_SAMPLING", "params.yaml's")
    rows = study.finetune_runs(params, "data", [f"full, {params.train.steps} steps, params.yaml's"])
    assert f"at step {params.train.steps}" in capsys.readouterr().out  # resumed at the end: no step redone
    stage = pd.read_csv(tmp_path / "val" / "main" / "per_object.csv")
    assert rows["object_id"].tolist() == stage["object_id"].tolist()
    for column in ("mv_psnr", "3d_psnr", "x0_psnr", "copy_input_psnr"):
        assert rows[column].tolist() == stage[column].tolist(), column

    # the sampling sweep on the stage's saved model: with the params' own sampler, evaluate's rows
    monkeypatch.setattr(study, "FINETUNE_VARIANTS", {"full": "main"})
    sampled = study.finetuned_sampling(params, "data", ["params.yaml's"])
    assert sampled["object_id"].tolist() == stage["object_id"].tolist()
    for column in ("mv_psnr", "3d_psnr", "x0_psnr", "copy_input_psnr"):
        assert sampled[column].tolist() == stage[column].tolist(), column


def test_one_study_setting_is_where_the_train_stages_start():
    """Exactly one fine-tune setting is the train stages' own (params.yaml's train section and
    textured scans, dvc.yaml's starts), so the stages resume its runs and its val rows describe
    their models."""
    study = load_study()
    params = load_params(ROOT / "params.yaml")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    starts = {(words := stage["cmd"].split())[words.index("--init-denoiser") + 1] for stage in
              (stages["train"], stages["train_variant"]["do"])}  # fmt: skip
    own = [
        name
        for name, (changes, _, denoiser, textured) in study.FINETUNE_SETTINGS.items()
        if all(getattr(params.train, k) == v for k, v in changes.items())
        and textured == params.data.train.textured_objects
        and starts == {str(denoiser)}
    ]
    assert len(own) == 1, own
    for stage in (stages["train"], stages["train_variant"]["do"]):
        assert str(study.FINETUNE_SETTINGS[own[0]][2]) in stage["deps"]
        assert str(study.PRETRAINED_G) in stage["deps"]


def test_finetune_writes_each_run_before_the_next_starts(tmp_path, monkeypatch):
    """A crash in a later run loses none of the earlier runs' val rows."""
    study = load_study()
    monkeypatch.setattr(study, "OUT", tmp_path)
    done, one = [], "600 steps, lr 0.0002, real share 0.5"

    def runs(params, data, chosen):
        if done:
            raise RuntimeError("killed in the second run")
        done.extend(chosen)
        row = {"run": chosen[0], "setting": "s", "steps": 600, "object_id": "ycb-a"}
        return pd.DataFrame([row | {c: 20.0 for c in study.FINETUNE_COLUMNS}])

    monkeypatch.setattr(study, "finetune_runs", runs)
    with pytest.raises(RuntimeError, match="second run"):
        study.main(["finetune", "--params", str(ROOT / "params.yaml"), "--runs", one])
    written = pd.read_csv(tmp_path / "finetune.csv")
    assert done == [f"full, {one}"] and written["run"].tolist() == done


def test_the_figure_has_a_panel_per_study_table_three_to_a_row(tmp_path, monkeypatch):
    """finetune, sampling and sampling-finetuned: three panels, one row of a 3-column grid;
    a fourth table starts a second row."""
    from PIL import Image

    study = load_study()
    monkeypatch.setattr(study, "OUT", tmp_path / "study")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study").mkdir()
    (tmp_path / "paper" / "figures").mkdir(parents=True)
    scores = {c: 20.0 for c in study.FINETUNE_COLUMNS}
    pd.DataFrame(
        [
            {"run": f"{m}, 600 steps, s", "setting": "s", "steps": 600, "object_id": "a"} | scores
            for m in ("full", "baseline")
        ]
    ).to_csv(tmp_path / "study" / "finetune.csv", index=False)
    pd.DataFrame([{"setting": "Euler 5"} | scores]).to_csv(tmp_path / "study" / "sampling.csv", index=False)
    pd.DataFrame([{"model": m, "setting": "Euler 5", "object_id": "a"} | scores for m in ("full", "baseline")]).to_csv(
        tmp_path / "study" / "sampling_finetuned.csv", index=False
    )
    study.figure()
    one_row = Image.open(tmp_path / "paper" / "figures" / "study.png").size
    curve = [{"run": "r", "step": s} | scores for s in (100, 200)]
    pd.DataFrame(curve).to_csv(tmp_path / "study" / "noise.csv", index=False)
    study.figure()
    two_rows = Image.open(tmp_path / "paper" / "figures" / "study.png").size
    assert one_row[0] == two_rows[0] and one_row[0] > 2 * one_row[1]  # three panels wide, one high
    assert two_rows[1] > 1.8 * one_row[1]
    sets = [{"objects": o, "step": s} | scores for s in (250, 500) for o in ("val (YCB)", "held-out procedural")]
    pd.DataFrame(sets).to_csv(tmp_path / "study" / "heldout.csv", index=False)
    for part in ("size", "mix"):
        (tmp_path / "study" / f"{part}.csv").write_text((tmp_path / "study" / "noise.csv").read_text())
    study.figure()  # seven panels, the held-out one the seventh: a third row
    three_rows = Image.open(tmp_path / "paper" / "figures" / "study.png").size
    assert three_rows[0] == one_row[0] and three_rows[1] > 2.7 * one_row[1]


def test_the_textured_mix_run_trains_on_what_the_render_stage_renders(tmp_path, monkeypatch):
    """The ``mix`` run with textured scans renders only the scans beside the linked split, and its
    train split is byte for byte what the render stage gives with ``data.train.textured_objects``."""
    from test_render import _fake_libero

    (tmp_path / "meshes").mkdir()
    trimesh.creation.box(extents=(1.0, 0.4, 0.3)).export(tmp_path / "meshes" / "box.obj")
    _fake_libero(tmp_path / "libero", monkeypatch)
    folder = {"source": "folder", "real_objects": 0}
    raw = tiny_raw(data={"folder": str(tmp_path / "meshes"), "workers": 1, "train": folder})
    params = params_from_dict(raw)
    render_dataset(params, tmp_path / "data" / "renders", splits=("train",), progress=False)
    study = load_study()
    monkeypatch.setattr(study, "OUT", tmp_path / "study")
    textured = study._with_textured(params, 1)
    root = study._textured_data(str(tmp_path / "data"), textured)
    render_dataset(textured, tmp_path / "stage" / "renders", splits=("train",), progress=False)
    write_ccms(tmp_path / "stage" / "renders", tmp_path / "stage" / "ccm", params.ccm.normalization, ("train",), False)
    for folder in ("renders", "ccm"):
        linked, stage = Path(root) / folder / "train", tmp_path / "stage" / folder / "train"
        assert sorted(p.name for p in linked.iterdir()) == sorted(p.name for p in stage.iterdir())
        assert any(p.name.startswith("libero-") for p in linked.iterdir())
        for obj in stage.iterdir():
            for f in obj.iterdir():
                assert (linked / obj.name / f.name).read_bytes() == f.read_bytes(), f
    assert (Path(root) / "renders" / "train" / "folder-box" / "depth.npy").stat().st_nlink == 2  # linked


def test_the_heldout_run_never_trains_on_the_objects_it_scores_as_held_out(tmp_path, monkeypatch):
    """``heldout`` trains on the render stage's subset of the procedural objects (what rendering
    with fewer would give) and scores the others, some trained ones and the val split apart."""
    torch.set_num_threads(1)
    params = params_from_dict(tiny_raw(data={"workers": 1}))
    render_dataset(params, tmp_path / "renders", splits=("train", "val"), progress=False)
    study = load_study()
    monkeypatch.setattr(study, "OUT", tmp_path / "study")
    monkeypatch.setattr(study, "HELD_OUT", 1)
    trained_on = []
    real_train = study.train

    def train(model, dataset, *args, **kwargs):
        trained_on.extend(dataset.object_ids)
        return real_train(model, dataset, *args, **kwargs)

    monkeypatch.setattr(study, "train", train)
    rows = study.heldout_run(params, str(tmp_path), steps=1, scored=5)
    procedural = [o for o in trained_on if o.startswith("random_urdfs-")]
    fewer = dataclasses.replace(params.data.train, max_objects=2)
    planned = study.plan_objects(
        dataclasses.replace(params, data=dataclasses.replace(params.data, train=fewer)), "train"
    )
    rendered = {p.name for p in (tmp_path / "renders" / "train").iterdir() if p.name.startswith("random_urdfs-")}
    # of the rendered ones, exactly those a render with fewer plans (here 1 of the 3: the tiny
    # split draws 3 of the 1000, the smaller plan 2 of the 1000; in the study's data all 1000 are rendered)
    assert set(procedural) == rendered & {o.object_id for o in planned} and 0 < len(procedural) < len(rendered)
    assert any("~orbit" in o for o in trained_on)  # the real scans all stay
    assert rows["objects"].tolist() == ["val (YCB)", "held-out procedural", "trained procedural"]
    assert rows["step"].tolist() == [1, 1, 1]
    assert rows[["x0_psnr", "mv_psnr", "copy_input_psnr"]].notna().all().all()
    # the held-out and the trained objects are different objects: so are their copy-input scores
    assert rows["copy_input_psnr"].nunique() == 3


def test_compare_scores_each_folder_per_val_object_and_its_paired_lead(tmp_path, monkeypatch, capsys):
    """``compare`` scores F as the training's validation does (its means equal validation_scores'),
    per object; a folder against itself leads by exactly 0, another F by something else."""
    from ouroboros3d.training.validation import validation_scores

    torch.set_num_threads(1)
    raw = tiny_raw(data={"workers": 1}, sample={"steps": 2})
    params = params_from_dict(raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    render_dataset(params, tmp_path / "data" / "renders", splits=("val",), progress=False)
    plain = dataclasses.replace(params, feedback=False)  # saved as F's publications are: no feedback networks
    torch.manual_seed(0)
    model = build_model(plain)
    Ouroboros3DPipeline.from_model(model, plain).save_pretrained(tmp_path / "f0")
    shutil.copytree(tmp_path / "f0", tmp_path / "f0_copy")
    with torch.no_grad():  # another F: the untrained one's outputs barely depend on its weights
        for p in model.denoiser.parameters():
            p.add_(0.2 * torch.randn_like(p))
    Ouroboros3DPipeline.from_model(model, plain).save_pretrained(tmp_path / "f1")
    study = load_study()
    folders = [str(tmp_path / name) for name in ("f0", "f0_copy", "f1")]
    df = study.compare_models(params, str(tmp_path / "data"), folders[::2])
    val = study._val(params, str(tmp_path / "data"))
    expected = validation_scores(study._pretrained_f(params, folders[0]), *val, study.sample_kwargs(params.sample))
    first = df[df["model"] == folders[0]]
    assert len(first) == len(val[1]) > 1
    assert first["x0_psnr"].mean() == pytest.approx(expected["x0_psnr"], abs=1e-5)
    assert first["mv_psnr"].mean() == pytest.approx(expected["mv_psnr"], abs=1e-5)

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert study.main(["compare", "--data", "data", "--models", *folders]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "(+0.00 [+0.00, +0.00])" in lines[1] and "(+0.00 [+0.00, +0.00])" not in lines[2]
    with pytest.raises(SystemExit) as exit_info:
        study.main(["compare", "--models", folders[0]])
    assert exit_info.value.code == 2 and "at least two" in capsys.readouterr().err
