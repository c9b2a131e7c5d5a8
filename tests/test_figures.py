"""The results figures (ouroboros3d.reporting.figures) on hand-made per-step records and training logs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ouroboros3d.reporting import figures


def test_pick_steps_spreads_from_the_first_to_the_last_step():
    assert figures.pick_steps(25, 6) == [0, 5, 10, 14, 19, 24]
    assert figures.pick_steps(3, 10) == [0, 1, 2]  # no more than there are
    assert figures.pick_steps(25, 0) == [0]


def _steps(values: dict[str, list[float]], sigmas=(10.0, 1.0)) -> pd.DataFrame:
    """steps.csv rows: per object, one row per step with its 3D PSNR and Chamfer distance."""
    rows = []
    for obj, psnrs in values.items():
        for step, (sigma, psnr) in enumerate(zip(sigmas, psnrs, strict=True)):
            rows.append({"object_id": obj, "step": step, "sigma": sigma, "3d_psnr": psnr, "cd": psnr / 100})
    return pd.DataFrame(rows)


def test_curves_average_the_objects_per_step_one_column_pair_per_run():
    runs = {"feedback": (_steps({"a": [10.0, 20.0], "b": [12.0, 24.0]}), {}), "off": (_steps({"a": [1.0, 3.0]}), {})}
    table = figures.curves(runs)
    assert list(table.columns) == ["step", "sigma", "psnr_3d_feedback", "cd_feedback", "psnr_3d_off", "cd_off"]
    assert list(table.step) == [0, 1] and list(table.sigma) == [10.0, 1.0]
    assert list(table.psnr_3d_feedback) == [11.0, 22.0]
    assert list(table.cd_off) == pytest.approx([0.01, 0.03])


def test_png_bytes_are_the_same_for_the_same_figure_and_carry_no_version():
    table = figures.curves({"run": (_steps({"a": [10.0, 20.0]}), {})})
    first, second = (figures.png_bytes(figures.curves_figure(table, ["run"])) for _ in range(2))
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and first == second
    assert b"Software" not in first and b"matplotlib" not in first.lower()


def _log(run_dir, kind: str, columns: dict[str, list[float]]) -> None:
    """A dvclive log as ouroboros3d.training.tracking writes it: metrics.json and one TSV per metric."""
    (run_dir / "plots" / "metrics" / kind).mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text("{}")
    for name, values in columns.items():
        lines = ["step\t" + name] + [f"{10 * i}\t{v}" for i, v in enumerate(values)]
        (run_dir / "plots" / "metrics" / kind / f"{name}.tsv").write_text("\n".join(lines) + "\n")


def test_learning_figure_has_a_panel_per_run_with_validation_curves(tmp_path):
    assert figures.learning_figure(tmp_path) is None  # no runs
    _log(tmp_path / "train_only", "train", {"loss": [1.0, 0.5]})
    assert figures.learning_figure(tmp_path) is None  # no validation curve
    val = {"mv_psnr": [11.0, 12.0], "x0_psnr": [12.0, 13.0], "copy_input_psnr": [9.0, 9.0], "white_psnr": [6.0, 6.0]}
    _log(tmp_path / "pretrain_denoiser", "val", val)
    fig = figures.learning_figure(tmp_path)
    (ax,) = fig.axes
    assert ax.get_title() == "pretrain_denoiser"
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["sampled views (no G)", "1-step: D(σ_max)", "copy input view", "white image"]
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), [0, 10])


def test_load_run_needs_recorded_steps(tmp_path):
    pd.DataFrame({"object_id": [], "step": []}).to_csv(tmp_path / "steps.csv", index=False)
    np.savez_compressed(tmp_path / "steps.npz", sigmas=np.array([]))
    with pytest.raises(ValueError, match="recorded no steps"):
        figures.load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="lacks"):
        figures.load_run(tmp_path / "nowhere")
