"""The dvclive training log: one row per step, exact resume, rank 0 only, any repository state."""

import json
import subprocess
import sys

from ouroboros3d.training.tracking import RunLog, read_curves, read_metrics


def _steps(path):
    return [int(line.split("\t")[0]) for line in path.read_text().splitlines()[1:]]


def test_a_resumed_log_drops_the_rows_after_its_checkpoint_and_logs_each_step_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a fresh DVC repository with no commit yet (`git init`, `dvc repro`): plain dvclive fails there
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
    log = RunLog(tmp_path / "log")
    for step in (1, 2, 3):
        log.log_step(step, {"loss": 1.0 / step, "lr": 0.1})
    log.log_val(2, {"psnr": 20.0})
    log.log_val(3, {"psnr": 30.0})  # killed after step 3: never closed
    assert read_metrics(tmp_path / "log")["train"]["loss"] == 1 / 3  # metrics.json follows the run

    log = RunLog(tmp_path / "log", resume_step=2)  # the checkpoint is at step 2
    # the log is left as it was until the resumed run logs (a resume that fails at its start keeps it)
    assert read_curves(tmp_path / "log")["step"].tolist() == [1, 2, 3]
    log.log_step(3, {"loss": 1.0 / 3, "lr": 0.1})
    assert read_curves(tmp_path / "log")["step"].tolist() == [1, 2, 3]  # step 3 dropped, then logged again
    assert read_curves(tmp_path / "log", "val")["step"].tolist() == [2]
    log.log_step(4, {"loss": 1.0 / 4, "lr": 0.1})
    log.log_val(4, {"psnr": 40.0})
    log.close(steps=4, finished=True)

    metrics_dir = tmp_path / "log" / "plots" / "metrics"
    assert _steps(metrics_dir / "train" / "loss.tsv") == [1, 2, 3, 4]
    assert _steps(metrics_dir / "train" / "lr.tsv") == [1, 2, 3, 4]
    assert _steps(metrics_dir / "val" / "psnr.tsv") == [2, 4]
    metrics = json.loads((tmp_path / "log" / "metrics.json").read_text())
    assert metrics == {"train": {"loss": 0.25, "lr": 0.1}, "val": {"psnr": 40.0}, "step": 4,
                       "run": {"steps": 4, "finished": True}}  # fmt: skip
    assert read_curves(tmp_path / "log", "val").to_dict("records") == [
        {"step": 2, "psnr": 20.0},
        {"step": 4, "psnr": 40.0},
    ]


def test_a_resume_keeps_the_key_order_and_survives_a_metrics_file_cut_short(tmp_path):
    log = RunLog(tmp_path / "log")
    for step in (1, 2, 3):
        log.log_step(step, {"loss": 1.0 / step, "lr": 0.1})  # "loss" before "lr": not the files' sorted order
    log.close(steps=3)
    order = list(json.loads((tmp_path / "log" / "metrics.json").read_text())["train"])
    log = RunLog(tmp_path / "log", resume_step=2)
    log.log_step(3, {"loss": 1.0 / 3, "lr": 0.1})
    log.close(steps=3)
    assert list(json.loads((tmp_path / "log" / "metrics.json").read_text())["train"]) == order

    # killed while dvclive wrote metrics.json: the resume goes on, its values from the curves
    path = tmp_path / "log" / "metrics.json"
    path.write_text(path.read_text()[:20])
    log = RunLog(tmp_path / "log", resume_step=2)
    log.log_step(3, {"loss": 1.0 / 3, "lr": 0.1})
    log.close(steps=3)
    assert read_metrics(tmp_path / "log")["train"] == {"loss": 1 / 3, "lr": 0.1}
    assert read_curves(tmp_path / "log")["step"].tolist() == [1, 2, 3]


def test_a_new_run_starts_a_new_log_and_other_ranks_log_nothing(tmp_path):
    log = RunLog(tmp_path / "log")
    log.log_step(1, {"loss": 1.0})
    log.log_params({"init": {"denoiser": "none"}})
    log.close()
    log = RunLog(tmp_path / "log", resume_step=0)  # started over: the old curve is gone
    log.log_step(1, {"loss": 2.0})
    log.close()
    assert read_curves(tmp_path / "log")["loss"].tolist() == [2.0]
    assert not (tmp_path / "log" / "params.yaml").exists()

    silent = RunLog(tmp_path / "rank1", enabled=False)
    silent.log_step(1, {"loss": 1.0})
    silent.log_val(1, {"psnr": 1.0})
    silent.close(steps=1)
    assert not (tmp_path / "rank1").exists()
    assert read_metrics(tmp_path / "rank1") == {} and read_curves(tmp_path / "rank1").empty
