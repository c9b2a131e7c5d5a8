"""Every DVC stage depends on the code it runs: the transitive ``ouroboros3d`` imports of its script.

A stage whose deps miss a module it imports goes stale silently when that module changes;
this test fails instead, naming the stage and the missing files.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from dvc_deps import code_closure, synced  # noqa: E402


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def test_every_stage_depends_on_the_code_it_imports():
    problems = []
    for name, stage in _stages().items():
        match = re.search(r"python (\S+\.py)", stage["cmd"])
        if not match:
            continue
        deps = {d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])}
        missing = sorted(
            f for f in code_closure(ROOT / match.group(1)) if not any(f == d or f.startswith(d + "/") for d in deps)
        )
        if missing:
            problems.append(f"{name}: {missing}")
    assert not problems, "stages missing code deps:\n" + "\n".join(problems)


def test_dvc_yaml_lists_exactly_the_code_each_stage_imports():
    # no module missing (the test above) and none left over: `python scripts/dvc_deps.py --write`
    text = (ROOT / "dvc.yaml").read_text()
    assert synced(text) == text, "run `python scripts/dvc_deps.py --write`"


def test_closure_follows_relative_and_lazy_imports():
    closure = code_closure(ROOT / "experiments" / "train.py")
    # train.py -> ouroboros3d.build -> (lazy) .model -> .splatting
    assert {"ouroboros3d/build.py", "ouroboros3d/model.py", "ouroboros3d/gaussians/splatting.py"} <= closure
    assert "ouroboros3d/__init__.py" in closure and "ouroboros3d/_compat.py" in closure


# --- params deps: the keys each stage reads after the preset is resolved -----------------


def _stage_instances() -> dict[str, dict]:
    """Every stage of dvc.yaml, a ``foreach`` stage once per item of params.yaml (``${item}`` filled in)."""
    raw_params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        if "foreach" not in stage:
            out[name] = stage
            continue
        key = stage["foreach"].strip("${}")
        items = raw_params
        for part in key.split("."):
            items = items[part]
        for item in items:
            text = yaml.safe_dump(stage["do"]).replace("${item}", str(item))
            out[f"{name}@{item}"] = yaml.safe_load(text)
    return out


def _tracked_keys(stage: dict) -> dict[str, list[str]]:
    """params file -> the keys a stage tracks in it (``None``: the whole file)."""
    out: dict[str, list[str] | None] = {}
    for entry in stage.get("params", []):
        if isinstance(entry, str):
            out.setdefault("params.yaml", []).append(entry)
        else:
            ((path, keys),) = entry.items()
            out[path] = keys
    return out


def _lookup(data: dict, dotted: str):
    for part in dotted.split("."):
        data = data[part]
    return data


def _tracked_values(raw_params: dict) -> dict[str, dict]:
    """What every stage's params deps would read, from params.yaml contents ``raw_params``."""
    from ouroboros3d.config import params_from_dict, resolved_params

    resolved = resolved_params(params_from_dict(raw_params))
    return {
        name: {key: _lookup(resolved, key) for key in _tracked_keys(stage).get(RESOLVED, [])}
        for name, stage in _stage_instances().items()
    }


RESOLVED = "results/resolved_params.yaml"


def test_only_the_resolve_stage_reads_params_yaml_the_others_read_resolved_keys_that_exist():
    from ouroboros3d.config import RESOLVED_PARAMS, load_params, resolved_params

    assert RESOLVED == RESOLVED_PARAMS
    resolved = resolved_params(load_params(ROOT / "params.yaml"))
    for name, stage in _stage_instances().items():
        files = _tracked_keys(stage)
        if name == "resolve_params":
            assert files == {"params.yaml": None}
            assert stage["outs"] == [{RESOLVED: {"cache": False}}]
            continue
        assert set(files) <= {RESOLVED}, f"{name} tracks params outside the resolved file: {sorted(files)}"
        for key in files.get(RESOLVED, []):
            assert key.split(".")[0] not in ("preset", "presets"), f"{name} tracks {key}"
            _lookup(resolved, key)  # a KeyError names a key that does not exist after resolution


def test_editing_an_inactive_preset_changes_no_stage_but_the_active_preset_does():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert raw["preset"] == "cpu-small"
    before = _tracked_values(raw)

    edited = copy.deepcopy(raw)
    edited["presets"]["gpu-medium"]["train"]["steps"] += 1
    edited["presets"]["paper"]["model"]["reconstructor"]["layers_per_block"] = 3
    assert _tracked_values(edited) == before

    active = copy.deepcopy(raw)
    active["presets"]["cpu-small"] = {"train": {"steps": raw["train"]["steps"] + 1}}
    after = _tracked_values(active)
    changed = sorted(name for name in before if after[name] != before[name])
    assert changed == sorted(["train", *(f"train_variant@{v}" for v in raw["train_variants"])])


def test_the_committed_resolved_params_are_those_of_the_committed_params_yaml():
    from ouroboros3d.config import load_params, resolved_params

    committed = yaml.safe_load((ROOT / RESOLVED).read_text())
    assert committed == resolved_params(load_params(ROOT / "params.yaml")), "run `dvc repro resolve_params`"


def test_the_stages_that_train_f_re_run_when_any_sampling_setting_changes():
    """Their val curves sample with params ``sample`` (the sampler, its guidance, its feedback
    window), and the model folder they write carries those settings to ``ouroboros3d generate``
    and the generate_example stage: a new sampler must not leave them stale."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    before = _tracked_values(raw)
    variants = (f"train_variant@{v}" for v in raw["train_variants"])
    trains_f = {"pretrain_denoiser", "pretrain_denoiser_continued", "train", *variants}
    for key, value in (("sampler", "heun" if raw["sample"]["sampler"] != "heun" else "euler"), ("feedback_start", 0.5)):
        edited = copy.deepcopy(raw)
        edited["sample"][key] = value
        after = _tracked_values(edited)
        changed = {name for name in before if after[name] != before[name]}
        assert trains_f <= changed, f"sample.{key}: {sorted(trains_f - changed)} would go stale"
        assert "pretrain_reconstructor" not in changed  # G's pretraining never samples
