"""Every param is checked before anything runs: a wrong type, a non-finite number, an impossible
model or a malformed params file stops ``resolve_params`` with exit code 2 and one ``error:`` line
naming the key (or the file), no traceback, and nothing written.

The cases are generated from the tests' tiny params (conftest.tiny_raw): every number of every
section gets NaN and infinities (floats) or a bool and a string (ints), every model width zero and
negative, every number of the inactive presets and every variant switch a wrong type; a table adds
the structural cases. Checks that mirror the model code (GroupNorm groups, attention heads) are
compared with the real denoiser and reconstructor below, so the two cannot drift apart.
"""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
import yaml
from conftest import load_script, tiny_raw

from ouroboros3d.config import ParamsError, _group_norm_groups, params_from_dict
from ouroboros3d.geometry.ccm import CCMNormalization

BASE = tiny_raw()
SECTIONS = [k for k in BASE if k not in ("presets", "variants")]
LEAN = BASE | {"presets": {}}  # the cases outside the presets parse faster without them
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _leaves(tree, path=()):
    """``(path, value)`` of every scalar in a tree of mappings and lists (path: keys and indices)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _leaves(v, (*path, i))
    else:
        yield path, tree


def _dotted(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _with(path, value, base=LEAN) -> dict:
    raw = copy.deepcopy(base)
    node = raw
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return raw


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def case(name: str, content, expect: str):
    """``content``: a params mapping (dumped as YAML), YAML text (str) or raw bytes."""
    return pytest.param(content, expect, id=name)


# model widths and their smallest valid value (0 where 0 means "none": no layers, no harmonics)
WIDTHS = {
    "model.denoiser": {
        "block_out_channels": 32,
        "num_attention_heads": 1,
        "image_encoder_channels": 1,
        "layers_per_block": 0,
        "transformer_layers_per_block": 0,
        "cross_attention_dim": 1,
        "addition_time_embed_dim": 0,
        "feedback_blocks_per_scale": 0,
        "camera_frequencies": 0,
        "camera_embed_dim": 1,
    },
    "model.reconstructor": {
        "image_size": 1,
        "down_channels": 1,
        "up_channels": 1,
        "layers_per_block": 1,
        "attention_head_dim": 1,
    },
}


def _generated() -> list:
    cases = []
    # 1. every number of every section: non-finite floats, and the wrong type for ints
    for path, v in _leaves({k: BASE[k] for k in SECTIONS}):
        if isinstance(v, float):
            bad = [math.nan, math.inf, -math.inf]
        elif _number(v):
            bad = [True, "seven"]
        else:
            continue
        for b in bad:
            cases.append(case(f"{_dotted(path)}={b!r}", _with(path, b), _dotted(path)))
    # 2. every model width: zero, just below its smallest valid value, and negative; per list entry
    for section, widths in WIDTHS.items():
        block = BASE["model"][section.split(".")[1]]
        for name, low in widths.items():
            value = block.get(name, 1)  # transformer_layers_per_block: not in params.yaml
            path = ("model", section.split(".")[1], name)
            for b in sorted({b for b in (0, low - 1, -1) if b < low}):
                if isinstance(value, list):
                    for i in range(len(value)):
                        entries = [*value[:i], b, *value[i + 1 :]]
                        cases.append(case(f"{section}.{name}[{i}]={b}", _with(path, entries), f"{section}.{name}"))
                else:
                    cases.append(case(f"{section}.{name}={b}", _with(path, b), f"{section}.{name}"))
    # 3. the inactive presets: their numbers are checked for type and finiteness too
    for preset, block in BASE["presets"].items():
        for path, v in _leaves(block or {}):
            if _number(v):
                b = math.nan if isinstance(v, float) else "x"
                key = f"presets.{preset}.{_dotted(path)}"
                cases.append(case(f"{key}={b!r}", _with(("presets", preset, *path), b, BASE), key))
    # 4. every switch of every ablation variant: a wrong type
    for name, block in BASE["variants"].items():
        for switch in block:
            bad = 1 if isinstance(block[switch], bool) else "ccm"
            changed = _with(("variants", name, switch), bad)
            cases.append(case(f"variants.{name}.{switch}={bad!r}", changed, f"variants.{name}: {switch}"))
    return cases


def _raw(**changes) -> dict:
    return tiny_raw(**changes)


def _text(**changes) -> str:
    return yaml.safe_dump(tiny_raw(**changes), sort_keys=False)


DENOISER = "model.denoiser"
RECON = "model.reconstructor"
STRUCTURAL = [
    # the file
    case("binary file", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not UTF-8"),
    case("non-UTF-8 text", "seed: 0\ncomment: caf\u00e9\n".encode("latin-1"), "not UTF-8"),
    case("NUL byte", "seed: 0\x00\n", "not valid YAML"),
    case("top level list", "- seed\n- 0\n", "must be a mapping"),
    case("top level scalar", "42\n", "must be a mapping"),
    case("top level string", "hello\n", "must be a mapping"),
    case("nested too deeply", "seed: " + "[" * 1000 + "]" * 1000 + "\n", "nested too deeply"),
    case("integer of 5000 digits", "seed: " + "9" * 5000 + "\n", "not valid YAML"),
    case("duplicate key", "seed: 0\nseed: 1\n", "not valid YAML"),
    case("python tag", "seed: !!python/object:os.system x\n", "not valid YAML"),
    case("recursive alias", "camera: &a {radius: 2.2, more: *a}\n", "contains itself"),
    # keys
    case("top level int key", _text() + "1: 2\n", "key 1 is not a name"),
    case("section int key", _raw(camera={3: 4}), "camera: key 3"),
    case("null key", _text() + "~: 1\n", "key None is not a name"),
    case("bool key", _text() + "true: 1\n", "key True is not a name"),
    case("variant int key", _raw(variants={"ccm": {7: 1}}), "variants.ccm: key 7"),
    case("preset int key", _raw(presets={"paper": {1: 2}}), "presets.paper: key 1"),
    # presets
    case("presets a list", _raw() | {"presets": ["cpu-small"]}, "presets: must be a mapping"),
    case("presets a string", _raw() | {"presets": "cpu-small"}, "presets: must be a mapping"),
    case("selected preset a string", _raw() | {"presets": {"cpu-small": "x"}}, "presets.cpu-small"),
    case("selected preset a list", _raw() | {"presets": {"cpu-small": [1]}}, "presets.cpu-small"),
    case("other preset a string", _raw(presets={"paper": "big"}), "presets.paper"),
    case("preset a list", _raw(preset=["paper"]), "preset: must be a string"),
    case("preset a mapping", _raw(preset={"a": 1}), "preset: must be a string"),
    case("preset unknown key", _raw(presets={"paper": {"train": {"stpes": 3}}}), "presets.paper.train.stpes"),
    # sections of the wrong shape
    case("section a list", _raw() | {"camera": [1, 2]}, "camera: must be a mapping"),
    case("section a string", _raw() | {"train": "fast"}, "train: must be a mapping"),
    case("variants a list", _raw() | {"variants": ["ccm"]}, "variants: must be a mapping"),
    case("variant a string", _raw(variants={"ccm": "on"}), "variants.ccm"),
    # types
    case("steps true", _raw(train={"steps": True}), "train.steps: must be an integer"),
    case("lr a string", _raw(train={"lr": "fast"}), "train.lr: must be a number"),
    case("resolution a date", _text().replace("resolution: 16", "resolution: 2020-01-01"), "data.resolution"),
    case("folder bytes", _text().replace("folder: null", "folder: !!binary aGVsbG8="), "data.folder"),
    case("int beyond 64 bits", _raw(train={"steps": 2**70}), "train.steps: must fit in 64 bits"),
    case("float beyond double", _text().replace("sigma_min: 0.002", "sigma_min: " + "9" * 400), "sample.sigma_min"),
    case("lr inf", _raw(train={"lr": math.inf}), "train.lr: must be a finite number"),
    case("sigma_max inf", _raw(sample={"sigma_max": math.inf}), "sample.sigma_max"),
    case("ccm offset nan", _raw(ccm={"offset": math.nan}), "ccm.offset"),
    case("variant lr nan", _raw(variants={"ccm": {"train": {"lr": math.nan}}}), "variants.ccm: train.lr"),
    # ranges
    case("seed 2**64", _raw(seed=2**64), "seed"),
    case("seed 2**32", _raw(seed=2**32), "seed: must lie in [0, 2**32)"),
    case("seed -1", _raw(seed=-1), "seed: must lie in [0, 2**32)"),
    case("variant seed 2**40", _raw(variants={"ccm": {"seed": 2**40}}), "variants.ccm: seed"),
    case("grad_clip 0", _raw(train={"grad_clip": 0.0}), "train.grad_clip: must be positive"),
    case("recon_views repeated", _raw(model={"recon_views": [0, 0]}), "model.recon_views: views must be distinct"),
    # impossible models
    case("denoiser width 48", _raw(model={"denoiser": {"block_out_channels": [32, 48, 32, 32]}}), DENOISER),
    case("denoiser no levels", _raw(model={"denoiser": {"block_out_channels": []}}), "need at least one level"),
    case("heads not dividing", _raw(model={"denoiser": {"num_attention_heads": [1, 3, 1, 1]}}), "level 1"),
    case("heads above width", _raw(model={"denoiser": {"num_attention_heads": [1, 1, 1, 64]}}), "level 3"),
    case("block type unknown", _raw(model={"denoiser": {"up_block_types": ["Up"] * 4}}), f"{DENOISER}.up_block_types"),
    case("no added time ids", _raw(model={"denoiser": {"added_time_ids": []}}), f"{DENOISER}.added_time_ids"),
    case("added time id nan", _raw(model={"denoiser": {"added_time_ids": [math.nan]}}), "added_time_ids[0]"),
    case("recon odd width", _raw(model={"reconstructor": {"down_channels": [8, 16, 5]}}), f"{RECON}.down_channels"),
    case("recon up odd width", _raw(model={"reconstructor": {"up_channels": [16, 9]}}), f"{RECON}.up_channels"),
    case(
        "recon heads not dividing",
        _raw(model={"reconstructor": {"down_channels": [8, 16, 50], "attention_head_dim": 16}}),  # 3 heads
        f"{RECON}.down_channels",
    ),
    case("recon image_size 0", _raw(model={"reconstructor": {"image_size": 0}}), f"{RECON}.image_size"),
]
CASES = _generated() + STRUCTURAL


@pytest.fixture(scope="module")
def resolve():
    return load_script("resolve_params").main


def _write(path, content) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(yaml.dump(content, Dumper=DUMPER, sort_keys=False))


@pytest.mark.parametrize(("content", "expect"), CASES)
def test_a_bad_params_file_stops_with_one_line_naming_the_key(content, expect, resolve, tmp_path, capfd):
    params, out = tmp_path / "params.yaml", tmp_path / "out" / "resolved.yaml"
    _write(params, content)
    capfd.readouterr()
    code = resolve(["--params", str(params), "--out", str(out)])
    captured = capfd.readouterr()
    err = captured.err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert expect in lines[0], lines[0]
    assert str(params) in lines[0]  # the file, too
    assert captured.out == ""
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]  # nothing written, no temporary file


def test_many_cases_are_generated():
    generated = _generated()
    assert len(generated) >= 60 and len(CASES) >= len(generated) + 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize(
    ("change", "check"),
    [
        ({"train": {"lr": 1}}, lambda r: r["train"]["lr"] == 1.0 and isinstance(r["train"]["lr"], float)),
        ({"sample": {"sigma_max": 20}}, lambda r: r["sample"]["sigma_max"] == 20.0),
        ({"seed": 2**32 - 1}, lambda r: r["seed"] == 2**32 - 1),
        ({"presets": None}, lambda r: r["preset"] == "cpu-small"),
        ({"presets": {"cpu-small": None}}, lambda r: r["preset"] == "cpu-small"),
        (
            {"model": {"denoiser": {"camera_frequencies": 0, "layers_per_block": 0, "addition_time_embed_dim": 0}}},
            lambda r: r["model"]["denoiser"]["camera_frequencies"] == 0,
        ),
        (  # level 0 of the small presets has no attention: its head count need not divide
            {"model": {"denoiser": {"num_attention_heads": [3, 1, 1, 1]}}},
            lambda r: r["model"]["denoiser"]["num_attention_heads"][0] == 3,
        ),
        ({"model": {"reconstructor": {"up_channels": [16, 7]}}}, lambda r: r["model"]["reconstructor"]["up_channels"]),
    ],
    ids=["int lr", "int sigma_max", "largest seed", "presets null", "preset null", "no harmonics", "heads", "width 7"],
)
def test_valid_but_odd_params_still_load(change, check, resolve, tmp_path, capfd):
    params, out = tmp_path / "params.yaml", tmp_path / "resolved.yaml"
    _write(params, tiny_raw(**change))
    assert resolve(["--params", str(params), "--out", str(out)]) == 0, capfd.readouterr().err
    assert check(yaml.safe_load(out.read_text()))


def test_an_empty_params_file_is_the_defaults(resolve, tmp_path):
    (tmp_path / "params.yaml").write_text("# nothing set\n")
    assert resolve(["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "r.yaml")]) == 0


def test_ccm_normalisation_refuses_non_finite_values():
    for bad in ({"offset": math.nan}, {"scale": math.inf}, {"background": -math.inf}):
        with pytest.raises(ValueError, match="finite"):
            CCMNormalization(**bad)


# --- the checks that mirror the model code agree with it ----------------------------------


def _accepts(**model) -> bool:
    try:
        params_from_dict(tiny_raw(model=model))
    except ParamsError:
        return False
    return True


def test_group_norm_groups_are_the_reconstructors():
    from ouroboros3d.models.reconstructor_blocks import group_norm as _group_norm

    for c in range(1, 300):
        try:
            groups = _group_norm(c).num_groups
        except ValueError:  # GroupNorm refuses a width its groups do not divide
            assert c % _group_norm_groups(c) != 0, c
        else:
            assert groups == _group_norm_groups(c), c


def test_reconstructor_widths_are_refused_exactly_when_the_reconstructor_cannot_be_built():
    from ouroboros3d.models.reconstructor import Reconstructor

    rng = random.Random(0)
    outcomes = set()
    for _ in range(40):
        r = {
            "down_channels": [rng.choice([3, 5, 6, 7, 8, 9, 12, 16, 24, 40]) for _ in range(3)],
            "up_channels": [rng.choice([3, 5, 7, 8, 10, 16]) for _ in range(2)],
            "attention_head_dim": rng.choice([4, 8, 16]),
            "layers_per_block": rng.choice([1, 2]),
            "mid_attention": rng.random() < 0.5,
            "down_attention": rng.choice([None, [rng.random() < 0.5 for _ in range(3)]]),
            "up_attention": rng.choice([None, [rng.random() < 0.5 for _ in range(2)]]),
        }
        accepted = _accepts(reconstructor=r)
        try:
            with torch.no_grad():
                g = Reconstructor(in_views=2, image_size=16, splat_size=8, **r)
                g(torch.rand(1, 2, 3, 16, 16), torch.randn(1, 2, 6, 16, 16), 1.0)
            works = True
        except (ValueError, RuntimeError, ZeroDivisionError):
            works = False
        assert accepted == works, r
        outcomes.add(works)
    assert outcomes == {True, False}


def test_denoiser_widths_and_heads_are_refused_exactly_when_the_denoiser_cannot_run():
    from ouroboros3d.models.denoiser import MultiViewDenoiser

    down, up = ("DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"), ("UpBlockSpatioTemporal",)
    up += ("CrossAttnUpBlockSpatioTemporal",)
    rng = random.Random(1)
    outcomes = set()
    for _ in range(12):
        d = {
            "block_out_channels": [rng.choice([32, 48, 64, 96]) for _ in range(2)],
            "num_attention_heads": [rng.choice([1, 2, 3, 64]) for _ in range(2)],
            "down_block_types": [rng.choice(down) for _ in range(2)],
            "up_block_types": [rng.choice(up) for _ in range(2)],
        }
        accepted = _accepts(denoiser=d)
        fields = {k: tuple(v) for k, v in d.items()}
        try:
            with torch.no_grad():
                net = MultiViewDenoiser(
                    latent_channels=3,
                    sample_size=8,
                    image_encoder="none",
                    cross_attention_dim=16,
                    addition_time_embed_dim=4,
                    feedback_maps=(),
                    camera_frequencies=2,
                    camera_embed_dim=8,
                    **fields,
                )
                x = torch.randn(1, 2, 3, 8, 8)
                net(
                    x,
                    torch.zeros(1),
                    cond_latent=x[:, 0],
                    cond_embedding=torch.randn(1, 1, net.config.cross_attention_dim),
                    plucker=torch.randn(1, 2, 6, 8, 8),
                )
            works = True
        except (ValueError, RuntimeError, ZeroDivisionError):
            works = False
        assert accepted == works, d
        outcomes.add(works)
    assert outcomes == {True, False}
