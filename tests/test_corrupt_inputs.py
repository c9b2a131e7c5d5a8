"""Damaged inputs, generated: every (corruption x file x stage) stops with exit code 2 and one `error:` line
naming the object (or results file) and the file, before any model is built, and writes nothing.

A tiny renders + CCM folder (2 boxes at 16², 4 views, as the tiny params sample them) and a hand-made
results tree are built once; each case damages one file of a copy and runs a stage's ``main`` in-process.
The renders cases run through train (the train split), ccm (the eval split: every split is checked before
any CCM is written) and evaluate (the eval split); the results cases through tables, figures and report.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import trimesh
import yaml
from conftest import ROOT, load_script, tiny_raw
from PIL import Image

from ouroboros3d.build import build_model
from ouroboros3d.config import params_from_dict
from ouroboros3d.data import MultiViewDataset, layout, render_dataset, write_ccms
from ouroboros3d.inference.pipeline import Ouroboros3DPipeline

VIEWS, RES = 4, 16
OBJ = "folder-box1"  # the damaged object: the second, so no case passes by failing on the first


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """params.yaml, data/renders/{train,val,eval} + data/ccm/{...} of two objects, a tiny model in ckpt/."""
    torch.set_num_threads(1)
    ws = tmp_path_factory.mktemp("corrupt")
    (ws / "meshes").mkdir()
    for k in range(2):
        trimesh.creation.box(extents=(1.0, 0.4 + 0.2 * k, 0.3)).export(ws / "meshes" / f"box{k}.obj")
    raw = tiny_raw(data={"folder": str(ws / "meshes"), "workers": 1, "train": {"source": "folder", "real_objects": 0}})
    (ws / "params.yaml").write_text(yaml.safe_dump(raw))
    params = params_from_dict(raw)
    data = ws / "data"
    render_dataset(params, data / "renders", splits=("train",), progress=False)
    for split in ("val", "eval"):  # the same objects in every split: the stages only need a folder each
        shutil.copytree(data / "renders" / "train", data / "renders" / split)
    write_ccms(data / "renders", data / "ccm", params.ccm.normalization, progress=False)
    torch.manual_seed(0)
    Ouroboros3DPipeline.from_model(build_model(params), params).save_pretrained(ws / "ckpt")
    return ws


@pytest.fixture(scope="module")
def scripts() -> dict:
    return {name: load_script(name) for name in ("train", "ccm", "evaluate", "evaluate_window", *RESULT_STAGES)}


# --- corruptions: each takes the file's path and damages it in place -------------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage(path: Path) -> None:
    path.write_bytes(b"\x00\x13 definitely not what this file should be \xfe" * 4)


def empty(path: Path) -> None:
    path.write_bytes(b"")


def delete(path: Path) -> None:
    path.unlink()


def not_utf8(path: Path) -> None:
    path.write_bytes(b"\xff\xfe\x00 latin-1 \xe9t\xe9 " + path.read_bytes())


def pickled(path: Path) -> None:
    np.save(path, np.array([{"depth": 1.0}, None], dtype=object), allow_pickle=True)


def text(content: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(content)

    return write


def edit_json(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        data = json.loads(path.read_text())
        change(data)  # in place
        path.write_text(json.dumps(data))

    return edit


def edit_array(change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        np.save(path, change(np.load(path)))

    return edit


def png_resized(path: Path) -> None:
    Image.open(path).resize((RES // 2, RES // 2)).save(path)


def jpeg(path: Path) -> None:
    Image.open(path).convert("RGB").save(path, format="JPEG")


def other_resolution(path: Path) -> None:
    """The whole object folder re-saved at half the resolution: every file whole and consistent."""
    folder = path.parent
    np.save(path, np.load(path)[:, ::2, ::2])
    for png in folder.glob("*.png"):
        png_resized(png)


def drop(key: str):
    return edit_json(lambda d: d.pop(key))


def case(file: str, corrupt, expect: str, id_: str):
    return pytest.param(file, corrupt, expect, id=f"{file}: {id_}")


# (file of the damaged object, corruption, a phrase the error line must contain)
RENDER_CASES = [
    case("cameras.json", text("{not json"), "is not valid JSON", "not JSON"),
    case("cameras.json", not_utf8, "is not UTF-8 text", "not UTF-8"),
    case("cameras.json", text("[1, 2, 3]"), "is a JSON list", "a list"),
    case("cameras.json", drop("K"), "lacks the key 'K'", "no K"),
    case("cameras.json", drop("c2w"), "lacks the key 'c2w'", "no c2w"),
    case("cameras.json", edit_json(lambda d: d.update(K=[["a", "b"]])), "not a list of 3x3", "K of strings"),
    case("cameras.json", edit_json(lambda d: d.update(c2w=[m[:3] for m in d["c2w"]])), "of shape", "c2w 3x4"),
    case("cameras.json", edit_json(lambda d: d.update(c2w=d["c2w"][:-1])), "intrinsics", "one pose fewer"),
    case("cameras.json", delete, "is missing", "missing"),
    case("depth.npy", truncate, "is truncated", "truncated"),
    case("depth.npy", pickled, "Python objects", "pickled"),
    case("depth.npy", garbage, "is not a NumPy .npy", "garbage"),
    case("depth.npy", empty, "is not a NumPy .npy", "empty"),
    case("depth.npy", edit_array(lambda a: a[0]), f"not ({VIEWS}, H, W)", "2-D"),
    case("depth.npy", edit_array(lambda a: a[:-1]), f"not ({VIEWS}, H, W)", "a view fewer"),
    case("depth.npy", edit_array(lambda a: a.astype(str)), "array of shape", "strings"),
    case("depth.npy", delete, "is missing", "missing"),
    case("depth.npy", other_resolution, "mixes renders", "object at another resolution"),
    case("rgb_01.png", png_resized, f"but depth.npy is {RES}x{RES}", "wrong size"),
    case("rgb_01.png", jpeg, "is not a PNG", "a JPEG"),
    case("rgb_01.png", truncate, "is truncated", "truncated"),
    case("rgb_01.png", delete, "is missing", "missing"),
    case("alpha_02.png", png_resized, f"but depth.npy is {RES}x{RES}", "wrong size"),
    case("alpha_02.png", text("not an image\n"), "is not a PNG", "text"),
    case("alpha_02.png", delete, "is missing", "missing"),
]
CCM_CASES = [
    case("ccm.npy", garbage, "is not a NumPy .npy", "garbage"),
    case("ccm.npy", truncate, "is truncated", "truncated"),
    case("ccm.npy", pickled, "Python objects", "pickled"),
    case("ccm.npy", edit_array(lambda a: a[:, :, ::2, ::2]), f"not {(VIEWS, 3, RES, RES)}", "half size"),
]
# stage: (split it reads, its arguments; {ws}, {data} and {out} are filled in)
STAGES = {
    "train": ("train", "--params {ws}/params.yaml --data {data}"),
    "ccm": (
        "eval",
        "--params {ws}/params.yaml --renders {data}/renders --out {out}/ccm --figures {out}/fig --no-progress",
    ),
    "evaluate": (
        "eval",
        "--params {ws}/params.yaml --models {ws} --variant ckpt --data {data} --out {out}/eval "
        "--metrics-out {out}/metrics.json --no-progress",
    ),
}


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(main, argv: list[str], capfd) -> str:
    """Run a stage; return its one error line after checking exit code 2, one line, no traceback."""
    capfd.readouterr()
    code = main(argv)
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _stage_case(stage, file, corrupt, expect, names, workspace, scripts, tmp_path, capfd, monkeypatch):
    split, argv = STAGES[stage]
    data = tmp_path / "data"
    shutil.copytree(workspace / "data", data)
    target = data / ("ccm" if file == layout.CCM_FILE else "renders") / split / OBJ / file
    if file == layout.MANIFEST_FILE:
        target = data / "renders" / file
    corrupt(target)
    cwd = tmp_path / "cwd"  # train writes models/, checkpoints/ and results/ here
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "out"
    before = _files(data)
    line = _run(scripts[stage].main, argv.format(ws=workspace, data=data, out=out).split(), capfd)
    assert expect in line, line
    for name in names:
        assert name in line, line
    assert _files(data) == before and not out.exists() and not any(cwd.iterdir())


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize(("file", "corrupt", "expect"), RENDER_CASES)
def test_a_damaged_render_stops_the_stage_with_one_line(
    stage, file, corrupt, expect, workspace, scripts, tmp_path, capfd, monkeypatch
):
    names = (f"'{OBJ}'", f"{OBJ}/{file}", "render")  # the object, its file, and: re-render it
    _stage_case(stage, file, corrupt, expect, names, workspace, scripts, tmp_path, capfd, monkeypatch)


@pytest.mark.parametrize("stage", ["train", "evaluate"])
@pytest.mark.parametrize(("file", "corrupt", "expect"), CCM_CASES)
def test_a_damaged_ccm_stops_the_stage_with_one_line(
    stage, file, corrupt, expect, workspace, scripts, tmp_path, capfd, monkeypatch
):
    names = (f"'{OBJ}'", f"{OBJ}/ccm.npy", "ccm stage")
    _stage_case(stage, file, corrupt, expect, names, workspace, scripts, tmp_path, capfd, monkeypatch)


@pytest.mark.parametrize(
    ("corrupt", "expect"),
    [(not_utf8, "is not a readable CSV"), (text("object_id,split\nfolder-box0,train\n"), "lacks the column")],
    ids=["not UTF-8", "no status column"],
)
def test_a_damaged_manifest_stops_the_ccm_stage(corrupt, expect, workspace, scripts, tmp_path, capfd, monkeypatch):
    names = ("manifest.csv", "render stage")
    _stage_case("ccm", "manifest.csv", corrupt, expect, names, workspace, scripts, tmp_path, capfd, monkeypatch)


# --- evaluate's options: refused before any model loads, or used as given ---------------------------------------------

EVAL_ARGS = "--params {ws}/params.yaml --models {ws}/nowhere --variant ckpt --data {ws}/data --out {out}"
OPTION_CASES = [
    ("evaluate", "--steps 0", "argument --steps: must be >= 1, got 0"),
    ("evaluate", "--steps -3", "argument --steps: must be >= 1"),
    ("evaluate", "--steps 2.5", "argument --steps: expected an integer"),
    ("evaluate", "--batch-size 0", "argument --batch-size: must be >= 1"),
    ("evaluate", "--max-objects -1", "argument --max-objects: must be >= 1, got -1"),
    ("evaluate", "--max-objects 0", "argument --max-objects: must be >= 1"),
    ("evaluate", "--max-objects many", "argument --max-objects: expected an integer"),
    ("evaluate", "--record-steps -1", "argument --record-steps: must be >= 0"),
    ("evaluate_window", "--feedback-start 0.4 --steps 0", "argument --steps: must be >= 1"),
    ("evaluate_window", "--feedback-start 0.4 --max-objects -1", "argument --max-objects: must be >= 1"),
    ("evaluate_window", "--feedback-start 2", "argument --feedback-start: must lie in [0, 1]"),
]


@pytest.mark.parametrize(("stage", "options", "expect"), OPTION_CASES, ids=[f"{s} {o}" for s, o, _ in OPTION_CASES])
def test_evaluate_refuses_counts_below_one_before_loading_the_model(
    stage, options, expect, workspace, scripts, tmp_path, capfd
):
    # --models points nowhere: an option checked after loading would say "checkpoint not found" instead
    argv = f"{EVAL_ARGS} {options}".format(ws=workspace, out=tmp_path / "out").split()
    line = _run(scripts[stage].main, argv, capfd)
    assert expect in line, line
    assert not (tmp_path / "out").exists()


def test_a_reused_window_refuses_options_it_would_ignore(workspace, scripts, tmp_path, capfd):
    nofb = params_from_dict(tiny_raw(feedback=False))
    torch.manual_seed(0)
    Ouroboros3DPipeline.from_model(build_model(nofb), nofb).save_pretrained(tmp_path / "nofb")
    argv = f"--models {tmp_path} --variant nofb --feedback-start 0.4 --same-as {tmp_path}/run --out {tmp_path}/out"
    line = _run(scripts["evaluate_window"].main, [*argv.split(), "--steps", "5"], capfd)
    assert "--steps cannot apply to this window" in line and "--same-as" in line, line
    assert not (tmp_path / "out").exists()


# --- valid but odd: still runs, and the items are exactly what the files hold -----------------------------------------


def _reference_item(obj_dir: Path, ccm_file: Path) -> dict:
    """An object read the plain way, file by file (what the dataset returned before it checked its files)."""
    cams = json.loads((obj_dir / "cameras.json").read_text())
    rgb = np.stack([np.asarray(Image.open(obj_dir / f"rgb_{v:02d}.png").convert("RGB")) for v in range(VIEWS)])
    alpha = np.stack([np.asarray(Image.open(obj_dir / f"alpha_{v:02d}.png").convert("L")) for v in range(VIEWS)])
    return {
        "K": torch.tensor(cams["K"], dtype=torch.float32),
        "c2w": torch.tensor(cams["c2w"], dtype=torch.float32),
        "views": torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0,
        "alpha": torch.from_numpy(alpha).float()[:, None] / 255.0,
        "depth": torch.from_numpy(np.load(obj_dir / "depth.npy").astype(np.float32)),
        "ccm": torch.from_numpy(np.load(ccm_file).astype(np.float32)),
    }


def test_extra_files_beside_the_objects_are_fine(workspace, scripts, tmp_path, capfd):
    data = tmp_path / "data"
    shutil.copytree(workspace / "data", data)
    for split in ("train", "val", "eval"):
        split_dir = data / "renders" / split
        (split_dir / OBJ / "notes.txt").write_text("rendered on a Tuesday\n")  # beside an object's files
        (split_dir / OBJ / "rgb_99.png").write_bytes(b"not a view this object has")  # beyond its views: unread
        (split_dir / "README.md").write_text("renders\n")
        (split_dir / "thumbnails").mkdir()  # an unrelated folder: no object files in it
        (split_dir / ".tmp-folder-box9-x").mkdir()  # an interrupted render's leftover
        (split_dir / ".tmp-folder-box9-x" / "depth.npy").write_bytes(b"partial")
    (data / "ccm" / "train" / "README.md").write_text("ccms\n")
    dataset = MultiViewDataset(data / "renders" / "train", data / "ccm" / "train")
    assert dataset.object_ids == ["folder-box0", OBJ]
    for i, object_id in enumerate(dataset.object_ids):
        item = dataset[i]
        expected = _reference_item(
            data / "renders" / "train" / object_id, data / "ccm" / "train" / object_id / "ccm.npy"
        )
        for key, value in expected.items():
            assert item[key].dtype == value.dtype and torch.equal(item[key], value), key
        assert torch.equal(item["input_view"], expected["views"][0])
    args = f"--params {workspace}/params.yaml --renders {data}/renders --out {tmp_path}/ccm --figures {tmp_path}/fig"
    capfd.readouterr()
    assert scripts["ccm"].main([*args.split(), "--no-progress"]) == 0, capfd.readouterr().err
    for split in ("train", "val", "eval"):
        assert sorted(p.name for p in (tmp_path / "ccm" / split).iterdir()) == ["folder-box0", OBJ]


def test_a_file_damaged_after_the_dataset_opened_is_one_error_naming_the_object(workspace, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(workspace / "data", data)
    dataset = MultiViewDataset(data / "renders" / "train", data / "ccm" / "train")
    png = data / "renders" / "train" / OBJ / "rgb_01.png"
    raw = bytearray(png.read_bytes())
    raw[40:-12] = b"\x00" * (len(raw) - 52)  # damaged inside: header and end chunk intact
    png.write_bytes(bytes(raw))
    MultiViewDataset(data / "renders" / "train", data / "ccm" / "train")  # the header checks cannot see it
    dataset[0]  # the other object is fine
    with pytest.raises(layout.CorruptObjectError, match=f"rendered object '{OBJ}': a file in .*{OBJ} cannot be read"):
        dataset[1]


# --- results files of tables, figures and report ----------------------------------------------------------------------

RESULT_STAGES = ("tables", "figures", "report")
OBJECTS = ["o0", "o1", "o2"]


def _metrics(name: str, start: float) -> dict:
    """A run's metrics.json with the parts the tables read (as experiments/evaluate.py writes them)."""
    stats = {"mean": 20.0, "ci_low": 19.5, "ci_high": 20.5, "n": 3}
    return {
        "name": name,
        "variant": "main",
        "model": {"feedback": True, "feedback_maps": ["ccm", "rgb"], "joint": True, "resolution": RES},
        "sample": {"feedback_start": start, "steps": 2},
        "objects": 3,
        "protocol": {"fscore_thresholds": [0.05], "interval": "95% t-interval over objects"},
        "summary": {"3d_psnr": stats, "mv_psnr": stats, "cd": {"mean": 0.1, "ci_low": None, "ci_high": None}},
        "unavailable": {"lpips": {"status": "unavailable", "reason": "no weights"}},
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """results/{eval/main, eval/main-fs1.0, train/main, tables, study, metrics.json} and a template copy."""
    root = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    for run, start in (("main", 0.0), ("main-fs1.0", 1.0)):
        folder = root / "eval" / run
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(_metrics(run, start), indent=2))
        psnr = rng.normal(20, 1, 3)
        per_object = {"object_id": OBJECTS, "3d_psnr": psnr, "mv_psnr": psnr - 0.5, "cd": rng.uniform(0, 1, 3)}
        per_object |= {"copy_input_psnr": psnr - 1, "x0_psnr": psnr + 1, "white_psnr": psnr - 5, "source": "folder"}
        pd.DataFrame(per_object).to_csv(folder / "per_object.csv", index=False)
        steps = [
            {"object_id": o, "step": s, "sigma": 10.0 / (s + 1), "3d_psnr": 15.0 + s, "cd": 0.1}
            for o in OBJECTS
            for s in range(2)
        ]
        pd.DataFrame(steps).to_csv(folder / "steps.csv", index=False)
        recon = rng.integers(0, 255, (3, 2, VIEWS, 3, 8, 8), dtype=np.uint8)
        np.savez_compressed(
            folder / "steps.npz",
            object_ids=np.array(OBJECTS),
            sigmas=np.array([10.0, 5.0]),
            recon_rgb=recon,
            gt_views=recon[:, -1],
        )
    train = root / "train" / "main"
    (train / "plots" / "metrics" / "val").mkdir(parents=True)
    summary = {
        "train": {"loss": 0.5, "loss_mv": 0.3, "loss_recon": 0.2},
        "step": 20,
        "run": {"steps": 20, "seconds": 60.0},
    }
    (train / "metrics.json").write_text(json.dumps(summary))
    for metric, value in (("x0_psnr", 15.0), ("mv_psnr", 14.0), ("copy_input_psnr", 13.0), ("white_psnr", 9.0)):
        (train / "plots" / "metrics" / "val" / f"{metric}.tsv").write_text(
            f"step\t{metric}\n10\t{value}\n20\t{value + 1}\n"
        )
    (root / "tables").mkdir()
    (root / "tables" / "table2_ablation.md").write_text("# Table 2\n\n| a |\n|---|\n| 1 |\n")
    (root / "study").mkdir()
    (root / "study" / "noise.csv").write_text("step,x0_psnr,mv_psnr,run\n100,16.5,16.0,EDM\n")
    (root / "metrics.json").write_text(json.dumps({"3d": {"psnr": 20.0}}, indent=2) + "\n")
    shutil.copy(ROOT / "paper" / "report_template.md", root / "report_template.md")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_raw()))
    return root


RESULT_ARGS = {
    "tables": "--params {r}/params.yaml --eval {r}/eval --out {out}",
    "figures": "--eval {r}/eval --train {r}/train --out {out}",
    "report": "--params {r}/params.yaml --results {r} --template {r}/report_template.md --out {out}/report.md",
}


def test_the_results_tree_is_valid(results, scripts, tmp_path, capfd):
    """The hand-made results pass every stage: the cases below fail for their damage alone."""
    for stage, argv in RESULT_ARGS.items():
        out = tmp_path / stage
        assert scripts[stage].main(argv.format(r=results, out=out).split()) == 0, capfd.readouterr().err
        assert any(out.iterdir())


def npz_without(key: str):
    def edit(path: Path) -> None:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files if k != key}
        np.savez_compressed(path, **arrays)

    return edit


def npz_pickled(path: Path) -> None:
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez_compressed(path, **arrays | {"sigmas": np.array([{"a": 1}], dtype=object)})


def npz_float_renders(path: Path) -> None:
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez_compressed(path, **arrays | {"recon_rgb": arrays["recon_rgb"].astype(np.float32)})


def rcase(stage: str, file: str, corrupt, expect: str, id_: str):
    return pytest.param(stage, file, corrupt, expect, id=f"{stage} {file}: {id_}")


METRICS, FS = "eval/main/metrics.json", "eval/main-fs1.0"
RESULT_CASES = [
    rcase("tables", METRICS, text("{not json"), "is not valid JSON", "not JSON"),
    rcase("tables", METRICS, not_utf8, "is not UTF-8 text", "not UTF-8"),
    rcase("tables", METRICS, text("[]"), "holds a JSON list, not a JSON object", "a list"),
    rcase("tables", METRICS, drop("model"), "lacks 'model'", "no model"),
    rcase(
        "tables",
        METRICS,
        edit_json(lambda d: d["model"].update(feedback="yes")),
        "'model.feedback' is not a boolean",
        "feedback a string",
    ),
    rcase("tables", METRICS, edit_json(lambda d: d["summary"].update(cd=7)), "summary of 'cd'", "a bare number"),
    rcase(
        "tables",
        METRICS,
        edit_json(lambda d: d["protocol"].update(fscore_thresholds=[])),
        "fscore_thresholds",
        "no thresholds",
    ),
    rcase(
        "tables",
        METRICS,
        edit_json(lambda d: d.update(unavailable={"fid": "offline"})),
        "'unavailable'",
        "a reason string",
    ),
    rcase("tables", f"{FS}/metrics.json", truncate, "is not valid JSON", "truncated"),
    rcase("figures", "eval/main/steps.npz", truncate, "is damaged", "truncated"),
    rcase("figures", "eval/main/steps.npz", garbage, "is not a NumPy .npz archive", "garbage"),
    rcase("figures", "eval/main/steps.npz", npz_pickled, "holds Python objects", "pickled"),
    rcase("figures", "eval/main/steps.npz", npz_without("gt_views"), "lacks the array(s) ['gt_views']", "no gt_views"),
    rcase("figures", "eval/main/steps.npz", npz_float_renders, "not uint8", "float renders"),
    rcase("figures", f"{FS}/steps.npz", empty, "is not a NumPy .npz archive", "empty"),
    rcase("figures", "eval/main/steps.csv", not_utf8, "is not a readable table", "not UTF-8"),
    rcase(
        "figures", "eval/main/steps.csv", text("object_id,step\no0,0\n"), "lacks the column(s) ['sigma']", "no sigma"
    ),
    rcase(
        "figures",
        "train/main/plots/metrics/val/mv_psnr.tsv",
        text("step\tmv_psnr\n10\tlots\n"),
        "not a dvclive metric log",
        "a word",
    ),
    rcase(
        "figures",
        "train/main/plots/metrics/val/x0_psnr.tsv",
        text("x0_psnr\n10\n"),
        "lacks the column(s) ['step']",
        "no step",
    ),
    rcase("figures", "train/main/plots/metrics/val/x0_psnr.tsv", not_utf8, "is not a readable table", "not UTF-8"),
    rcase("report", "report_template.md", not_utf8, "is not UTF-8 text", "template not UTF-8"),
    rcase(
        "report",
        "report_template.md",
        text("{{setup}} {{nonsense}}\n"),
        "no filler: ['nonsense']",
        "unknown placeholder",
    ),
    rcase("report", "train/main/metrics.json", text("{"), "is not valid JSON", "truncated"),
    rcase(
        "report",
        "train/main/metrics.json",
        edit_json(lambda d: d.update(train=[1, 2])),
        "'train' is not a JSON object",
        "train a list",
    ),
    rcase(
        "report",
        "train/main/metrics.json",
        edit_json(lambda d: d["train"].update(loss="low")),
        "not numbers",
        "a loss word",
    ),
    rcase("report", "train/main/plots/metrics/val/mv_psnr.tsv", empty, "is not a readable table", "empty"),
    rcase("report", "eval/main/per_object.csv", text("3d_psnr\n1\n"), "lacks the column(s) ['object_id']", "no ids"),
    rcase("report", f"{FS}/per_object.csv", text("object_id,3d_psnr\no0,high\n"), "non-numeric", "a word"),
    rcase("report", "eval/main/per_object.csv", not_utf8, "is not a readable table", "not UTF-8"),
    rcase("report", "tables/table2_ablation.md", not_utf8, "is not UTF-8 text", "table not UTF-8"),
    rcase("report", "metrics.json", text("{'3d': nan"), "is not valid JSON", "not JSON"),
    rcase(
        "report", "study/noise.csv", text("step,x0_psnr\n100,16.5\n"), "lacks the column(s) ['run']", "no run column"
    ),
]
REMEDY = {  # the stage (or command) that re-creates each kind of file
    "eval/main/": "`evaluate`",
    f"{FS}/": "`evaluate_window@1.0`",
    "train/main/": "`train`",
    "tables/": "`tables`",
    "study/": "learning_study.py",
    "metrics.json": "`evaluate`",
    "report_template.md": "report_template.md",
}


@pytest.mark.parametrize(("stage", "file", "corrupt", "expect"), RESULT_CASES)
def test_a_damaged_results_file_stops_the_stage_with_one_line(
    stage, file, corrupt, expect, results, scripts, tmp_path, capfd
):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    corrupt(copy / file)
    before = _files(copy)
    out = tmp_path / "out"
    line = _run(scripts[stage].main, RESULT_ARGS[stage].format(r=copy, out=out).split(), capfd)
    assert expect in line, line
    assert str(copy / file) in line, line  # the file, by its path
    remedy = next(v for k, v in REMEDY.items() if file.startswith(k) or file == k)
    assert remedy in line, line
    assert _files(copy) == before and not out.exists()


def test_the_generated_cases_are_many():
    renders = len(RENDER_CASES) * len(STAGES) + len(CCM_CASES) * 2 + 2
    assert renders >= 60 and len(RESULT_CASES) >= 25 and len(OPTION_CASES) >= 10
