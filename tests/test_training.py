"""The training loop: it learns, it resumes exactly, it never mixes runs of other params."""

import dataclasses
import itertools
import json

import pytest
import torch
from conftest import SyntheticDataset, synthetic_batch, tiny_params
from safetensors.torch import load_file

from ouroboros3d.build import build_model, training_fingerprint
from ouroboros3d.errors import UserError
from ouroboros3d.evaluation.perceptual import WeightsUnavailable, load_lpips
from ouroboros3d.training.batches import BATCH_KEYS, batch_indices, batch_plan, training_batches
from ouroboros3d.training.loop import lr_schedule, train
from ouroboros3d.training.state import EMA, checkpoint_metadata, load_training_state, save_training_state
from ouroboros3d.training.tracking import read_curves


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    # accelerate keeps one process-wide state whose precision cannot change: a test of another
    # precision in the same worker needs it reset (a training process trains at one precision)
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state()


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


def test_real_share_fixes_each_batchs_mix_and_visits_every_real_object_reproducibly():
    class Objects:
        object_ids = [f"random_urdfs-{i:03d}" for i in range(20)] + [f"ycb-a~orbit{k}" for k in range(4)]

        def __len__(self):
            return len(self.object_ids)

    objects = Objects()
    real = set(range(20, 24))
    plan = batch_plan(objects, 4, 0.5)
    batches = [plan(step, 3) for step in range(10)]
    assert all(len(b) == 4 and len(real & set(b)) == 2 for b in batches)  # 2 of 4, against the split's 1 in 6
    # each group runs through its own epochs: 2 steps see all 4 real orbits, 10 steps all 20 procedural
    assert set(batches[0] + batches[1]) >= real
    assert {i for b in batches for i in b} == set(range(24))
    assert plan(7, 3) == batch_plan(objects, 4, 0.5)(7, 3)  # a function of (seed, step): exact resume
    assert batch_plan(objects, 4, None)(7, 3) == batch_indices(24, 4, 7, 3)  # null: the old draw
    assert all(real >= set(b) for b in (batch_plan(objects, 4, 1.0)(s, 0) for s in range(3)))
    objects.object_ids = objects.object_ids[:20]
    with pytest.raises(UserError, match=r"real_share 0\.5 asks for 2 real objects per batch, but the training split"):
        batch_plan(objects, 4, 0.5)


def test_the_loader_reads_each_ranks_share_of_each_step_as_planned():
    params = tiny_params()
    dataset = SyntheticDataset(params, size=5)
    plan = batch_plan(dataset, 4, 0.5)
    steps = range(3, 7)
    rng = torch.get_rng_state()
    for workers, rank in itertools.product((0, 2), (0, 1)):
        positions = range(rank, 4, 2)  # rank r of 2: positions r, r + 2 of the global batch of 4
        batches = list(training_batches(dataset, plan, 0, steps, positions, "cpu", workers))
        assert len(batches) == len(steps)
        for step, batch in zip(steps, batches, strict=True):
            indices = [plan(step, 0)[j] for j in positions]
            assert list(batch) == list(BATCH_KEYS)
            for k in BATCH_KEYS:
                assert torch.equal(batch[k], torch.stack([dataset[i][k] for i in indices])), (workers, rank, step, k)
    assert torch.equal(torch.get_rng_state(), rng)  # the loader drew nothing from the global generator


def test_the_number_of_loader_workers_changes_no_number(tmp_path):
    params = tiny_params(train={"steps": 3, "checkpoint_every": 3})
    in_process, _ = _run(params, tmp_path, "in-process", loader_workers=0)
    two_workers, _ = _run(params, tmp_path, "two-workers", loader_workers=2)
    a, b = _state(in_process), _state(two_workers)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


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


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_resume_after_a_kill_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, precision):
    # bf16: CPU autocast, the paper preset's fp16 path but for its loss scaler (tested below)
    params = tiny_params(train={"mixed_precision": precision})  # 6 steps, checkpoint every 2
    straight, _ = _run(params, tmp_path, "straight")

    # "kill" after 3 steps: the last checkpoint is at step 2, step 3 is lost and redone
    _, first = _run(params, tmp_path, "resumed", stop_after=3)
    assert not first["finished"]
    meta = checkpoint_metadata(tmp_path / "resumed" / "ckpt" / "last.safetensors")
    assert meta["step"] == "2" and float(meta["seconds"]) > 0
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
    straight_metrics = json.loads((log_straight / "metrics.json").read_text())
    assert metrics["train"]["loss"] == straight_metrics["train"]["loss"]

    def keys(d):  # the key order, all the way down: the file's bytes follow it
        return [(k, keys(v) if isinstance(v, dict) else None) for k, v in d.items()]

    assert keys(metrics) == keys(straight_metrics)
    # the time counts both invocations: from the checkpoint's steps on, not from 0 again
    seconds = curves["seconds"].tolist()  # after steps 1, ..., 6
    assert seconds == sorted(seconds) and seconds[2] > float(meta["seconds"])
    assert metrics["run"]["seconds"] >= seconds[-1]
    assert second["seconds"] == pytest.approx(metrics["run"]["seconds"], abs=1)


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


def test_bf16_autocast_is_in_effect(tmp_path):
    from accelerate.state import AcceleratorState

    fp32 = _state(_run(tiny_params(train={"steps": 2, "checkpoint_every": 2}), tmp_path, "fp32")[0])
    AcceleratorState._reset_state()
    bf16_params = tiny_params(train={"steps": 2, "checkpoint_every": 2, "mixed_precision": "bf16"})
    bf16 = _state(_run(bf16_params, tmp_path, "bf16")[0])
    assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32)


def _ema_and_optimizer(model, params):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return EMA(model, params.train.ema_decay), optimizer


def test_the_checkpoint_leaves_out_frozen_weights_and_restores_the_rest(tmp_path):
    params = tiny_params()
    model = _fresh(params)
    model.reconstructor.requires_grad_(False)  # as the paper preset's VAE and CLIP
    ema, optimizer = _ema_and_optimizer(model, params)
    path = tmp_path / "last.safetensors"
    save_training_state(path, model, ema, optimizer, 3, "fp")
    saved = {k[6:] for k in load_file(str(path)) if k.startswith("model.")}
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not saved & frozen and saved | frozen == set(model.state_dict())

    other = _fresh(dataclasses.replace(params, seed=1))
    torch.manual_seed(1)
    for p in other.parameters():
        p.data.normal_()
    other.reconstructor.requires_grad_(False)
    reconstructor = _state(other.reconstructor)
    assert load_training_state(path, other, *_ema_and_optimizer(other, params)) == 3
    for k, v in model.state_dict().items():
        if k not in frozen:
            assert torch.equal(other.state_dict()[k], v), k
    # the frozen weights are the model's own (rebuilt from their pretrained folders), untouched
    assert all(torch.equal(v, other.reconstructor.state_dict()[k]) for k, v in reconstructor.items())

    # a trainable weight missing from the file is an error, not a silent partial load: nothing loads
    other.reconstructor.requires_grad_(True)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    before = _state(other)
    with pytest.raises(ValueError, match="does not match this model"):
        load_training_state(path, other, *_ema_and_optimizer(other, params))
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in before.items())


def test_the_fp16_loss_scale_is_checkpointed_and_restored(tmp_path):
    params = tiny_params()
    model = _fresh(params)
    ema, optimizer = _ema_and_optimizer(model, params)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    loss = sum(p.sum() for p in model.parameters() if p.requires_grad)
    for _ in range(4):  # grows after 3 finite steps, and counts one more
        optimizer.zero_grad()
        scaler.scale(loss).backward(retain_graph=True)
        scaler.step(optimizer)
        scaler.update()
    assert scaler.get_scale() == 2.0**11
    save_training_state(tmp_path / "last.safetensors", model, ema, optimizer, 4, "fp", scaler)
    restored = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=3)
    load_training_state(tmp_path / "last.safetensors", model, ema, optimizer, scaler=restored)
    assert restored.state_dict() == scaler.state_dict()


def test_the_lr_schedule_is_a_lambda_lr_that_resumes_at_its_step():
    params = tiny_params(train={"steps": 40, "warmup_steps": 5, "lr_decay_fraction": 0.5, "lr": 1e-3})
    settings = params.train

    def lrs(start, stop):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=settings.lr)
        schedule = lr_schedule(optimizer, settings, start)
        out = []
        for _ in range(start, stop):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return out

    straight = lrs(0, 40)
    assert straight[0] == pytest.approx(settings.lr / 5) and straight[4] == pytest.approx(settings.lr)
    assert straight[10] == settings.lr and straight[-1] == pytest.approx(0.1 * settings.lr, rel=0.06)
    assert all(a <= b for a, b in itertools.pairwise(straight[:6]))  # warm-up rises
    assert all(a >= b for a, b in itertools.pairwise(straight[20:]))  # cosine falls
    assert lrs(17, 40) == straight[17:]  # a resumed run continues the same schedule exactly
