"""benchmarks/learning_study.py's data-mix runs: fewer orbits per real object, taken from the rendered split."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
from conftest import ROOT, tiny_params

from ouroboros3d.data.render_stage import real_training_objects


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
