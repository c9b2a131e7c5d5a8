"""The training loop: it learns, it resumes exactly, it never mixes runs of other params."""

import dataclasses
import json

import pytest
import torch
from conftest import SyntheticDataset, synthetic_batch, tiny_params

from ouroboros3d.build import build_model, training_fingerprint
from ouroboros3d.perceptual import WeightsUnavailable, load_lpips
from ouroboros3d.tracking import read_curves
from ouroboros3d.training import batch_indices, checkpoint_metadata, train


def _fresh(params):
    torch.manual_seed(0)
    return build_model(params)


def _run(params, tmp_path, name, **kw):
    model = _fresh(params)
    summary = train(
        model,
        SyntheticDataset(params),
        params.train,
        tmp_path / name / "ckpt",
        tmp_path / name / "log",
        seed=params.seed,
        fingerprint=training_fingerprint(params),
        progress=False,
        **kw,
    )
    return model, summary


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_batch_indices_cover_each_epoch_and_are_reproducible():
    seen = [i for step in range(5) for i in batch_indices(10, 2, step, seed=1)]
    assert sorted(seen) == list(range(10))
    assert batch_indices(10, 2, 7, seed=1) == batch_indices(10, 2, 7, seed=1)
    assert batch_indices(10, 2, 0, seed=1) != batch_indices(10, 2, 0, seed=2)
    assert len(batch_indices(3, 5, 0, seed=0)) == 5  # batches larger than the dataset wrap round


def test_a_few_steps_lower_the_loss(tmp_path):
    params = tiny_params(train={"steps": 25, "lr": 3e-3, "checkpoint_every": 25})
    batch = synthetic_batch(params)

    def evaluate(model):
        # a fixed noise draw and fixed sigma: a deterministic measure of the same quantity
        with torch.no_grad():
            out = model(batch, torch.Generator().manual_seed(123), feedback_prob=0.0, cond_dropout=0.0)
        return float(out["loss_mv"]), float(out["loss_recon"])

    before = evaluate(_fresh(params))
    model, summary = _run(params, tmp_path, "learn")
    after = evaluate(model)
    assert summary["finished"] and summary["steps"] == 25
    assert after[0] < before[0], (before, after)
    assert after[1] < before[1], (before, after)


def test_resume_after_a_kill_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    params = tiny_params()  # 6 steps, checkpoint every 2
    straight, _ = _run(params, tmp_path, "straight")

    # "kill" after 3 steps: the last checkpoint is at step 2, step 3 is lost and redone
    _, first = _run(params, tmp_path, "resumed", stop_after=3)
    assert not first["finished"]
    meta = checkpoint_metadata(tmp_path / "resumed" / "ckpt" / "last.safetensors")
    assert meta["step"] == "2"
    resumed, second = _run(params, tmp_path, "resumed")
    assert second["finished"]
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # the dvclive log has each step once in every metric file, as the uninterrupted run's
    log, log_straight = tmp_path / "resumed" / "log", tmp_path / "straight" / "log"
    files = sorted(p.relative_to(log) for p in (log / "plots" / "metrics" / "train").glob("*.tsv"))
    assert {p.stem for p in files} >= {"loss", "loss_mv", "loss_recon", "lr", "seconds"}
    for rel in files:
        lines = (log / rel).read_text().splitlines()
        assert lines[0] == f"step\t{rel.stem}"
        assert [int(line.split("\t")[0]) for line in lines[1:]] == list(range(1, 7)), rel
        if rel.stem != "seconds":
            assert lines == (log_straight / rel).read_text().splitlines(), rel
    curves = read_curves(log)
    assert curves["step"].tolist() == list(range(1, 7)) and "loss_mv" in curves
    metrics = json.loads((log / "metrics.json").read_text())
    assert metrics["step"] == 6 and metrics["run"]["finished"] and metrics["run"]["steps"] == 6
    assert metrics["train"]["loss"] == json.loads((log_straight / "metrics.json").read_text())["train"]["loss"]


def test_a_checkpoint_of_other_params_is_not_resumed(tmp_path, capsys):
    params = tiny_params()
    _run(params, tmp_path, "run", stop_after=2)
    other = dataclasses.replace(params, train=dataclasses.replace(params.train, lr=5e-4))
    assert training_fingerprint(other) != training_fingerprint(params)
    more_data = dataclasses.replace(params.data, train=dataclasses.replace(params.data.train, real_objects=5))
    assert training_fingerprint(dataclasses.replace(params, data=more_data)) != training_fingerprint(params)
    _, summary = _run(other, tmp_path, "run", stop_after=1)
    assert "other params" in capsys.readouterr().out
    assert summary["steps"] == 1  # started over at step 0


def test_lpips_without_pretrained_weights_is_unavailable_not_random(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    with pytest.raises(WeightsUnavailable, match="backbone weights"):
        load_lpips("alex")


def test_train_stage_stops_with_a_clear_error_when_lpips_is_asked_for_but_missing(tmp_path, monkeypatch, capsys):
    import yaml
    from conftest import load_script, tiny_raw

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    raw = tiny_raw(train={"lpips_weight": 0.5})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    stage = load_script("train")
    assert stage.main(["--params", str(tmp_path / "params.yaml")]) == 2
    assert "LPIPS" in capsys.readouterr().err
