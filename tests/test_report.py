"""The report's verdicts come from paired differences and their intervals, never by hand."""

import pandas as pd
import pytest
from conftest import ROOT

from ouroboros3d.reporting import report as reporting
from ouroboros3d.reporting import study
from ouroboros3d.reporting.comparison import paired


def _frame(values):
    return pd.DataFrame({"object_id": [f"o{i}" for i in range(len(values))], "x": values}).set_index("object_id")


def test_paired_difference_and_t_interval_by_hand():
    a, b = _frame([3.0, 5.0, 4.0]), _frame([1.0, 2.0, 3.0])
    d = paired(a, b, "x")  # differences 2, 3, 1: mean 2, sd 1, t(0.975, 2) = 4.3027
    assert d["n"] == 3 and d["mean"] == pytest.approx(2.0)
    assert d["hi"] - d["mean"] == pytest.approx(4.302653 / 3**0.5, rel=1e-5)
    # only shared objects are paired
    assert paired(a, _frame([1.0, 2.0]), "x")["n"] == 2


def test_verdict_needs_the_interval_to_exclude_zero():
    assert reporting.verdict({"mean": 1.0, "lo": 0.2, "hi": 1.8}, higher_is_better=True) == "better"
    assert reporting.verdict({"mean": 1.0, "lo": 0.2, "hi": 1.8}, higher_is_better=False) == "worse"
    assert reporting.verdict({"mean": 1.0, "lo": -0.2, "hi": 2.2}, higher_is_better=True) == "no detectable difference"
    assert reporting.verdict(None, True) == "not measured"


def test_template_placeholders_must_all_be_filled(tmp_path, params):
    with pytest.raises(KeyError, match="nonsense"):
        reporting.render_report("{{setup}} {{nonsense}}", params, tmp_path)
    text = reporting.render_report((ROOT / "paper" / "report_template.md").read_text(), params, tmp_path)
    assert "{{" not in text and "not measured" in text


def _per_object_csv(results, run, **columns):
    folder = results / "eval" / run
    folder.mkdir(parents=True)
    ids = [f"o{i}" for i in range(len(next(iter(columns.values()))))]
    pd.DataFrame({"object_id": ids, **columns}).to_csv(folder / "per_object.csv", index=False)


def test_claims_pair_the_runs_per_object_and_say_when_one_is_missing(tmp_path):
    step = [1.0, 1.1, 0.9, 1.0, 1.05]  # main - no feedback: clearly above zero
    psnr = [20.0, 21.0, 22.0, 23.0, 24.0]
    cd = [0.1, 0.2, 0.1, 0.2, 0.1]
    _per_object_csv(
        tmp_path,
        "main",
        **{"3d_psnr": psnr, "mv_psnr": [p - s for p, s in zip(psnr, step, strict=True)], "cd": cd},
        copy_input_psnr=[30.0] * 5,
        x0_psnr=[31.0, 31.2, 30.9, 31.1, 31.0],
    )
    _per_object_csv(
        tmp_path,
        "main-fs1.0",
        **{"3d_psnr": [p - s for p, s in zip(psnr, step, strict=True)], "mv_psnr": psnr},
        cd=[c + d for c, d in zip(cd, [0.01, -0.01, 0.02, -0.02, 0.0], strict=True)],
    )
    table = reporting.claims_table(tmp_path, ["baseline"])
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    verdicts = {(claim, metric): (diff, verdict) for claim, metric, diff, verdict in rows}
    # differences 1, 1.1, 0.9, 1, 1.05: mean 1.01, sd 0.0742, t(0.975, 4) = 2.776: ± 0.092
    assert rows[0][1:] == ["3d_psnr", "+1.01 [+0.92, +1.10] (n=5)", "better"]
    assert verdicts[("... and the 3D geometry", "cd")][1] == "no detectable difference"
    assert verdicts[("... and the multi-view images", "mv_psnr")][1] == "worse"
    baseline = "the full model beats no joint training / no feedback (Table 2, row 1 vs 5)"
    assert verdicts[(baseline, "3d_psnr")] == ("–", "not measured (run missing)")  # no results/eval/baseline
    sanity = "(sanity) 3D renders beat copying the input view into every view"
    assert verdicts[(sanity, "3d_psnr − copy_input_psnr")][1] == "worse"
    # the bar: F's conditional mean against copy-input, paired per object
    x0 = "(sanity) F's 1-step conditional mean beats copying the input view"
    assert verdicts[(x0, "x0_psnr − copy_input_psnr")] == ("+1.04 [+0.90, +1.18] (n=5)", "better")
    # the white baseline was not scored: no row for it
    assert not any("white" in r[1] for r in rows)
    assert rows[-1][2] == "-1.01 dB over 5 objects"


def test_the_mean_study_reports_psnr_mse_and_wins_over_copy_input(tmp_path):
    """Two objects: the 1-step sample wins one by far in MSE and loses the other, so its mean
    PSNR and its PSNR of the mean MSE disagree, which is what the table is for."""
    rows = [
        ("copy-input", 0, 20.0, 0.01),
        ("copy-input", 1, 30.0, 0.001),
        ("1-step sample", 0, 25.0, 10**-2.5),
        ("1-step sample", 1, 20.0, 0.01),
    ]
    (tmp_path / "study").mkdir()
    pd.DataFrame(rows, columns=["prediction", "object", "psnr", "mse"]).to_csv(tmp_path / "study/mean.csv", index=False)
    table = study._study_mean(tmp_path / "study/mean.csv")
    # copy: mean PSNR 25, mean MSE 0.0055 -> 22.60 dB; sample: 22.5, (0.003162 + 0.01) / 2 -> 21.82 dB
    assert "| copy-input | 25.00 | 22.60 | – |" in table
    assert "| 1-step sample | 22.50 | 21.82 | 1 of 2 |" in table
    assert "not run" in study._study_mean(tmp_path / "absent.csv")


def test_the_finetune_study_pairs_full_and_baseline_per_object_and_length(tmp_path):
    """Leads 0, 1, 1 at 300 steps (mean 2/3, sd 1/sqrt(3)) and a length with only the full model, left out."""
    rows = [
        {"run": f"{model}, 300 steps, lr 1", "setting": "lr 1", "steps": 300, "object_id": o,
         "mv_psnr": mv, "3d_psnr": d}
        for model, scores in (("full", [(20, 19), (21, 20), (22, 21)]), ("baseline", [(19, 19), (21, 19), (20, 20)]))
        for o, (mv, d) in zip("abc", scores, strict=True)
    ] + [{"run": "full, 600 steps, lr 1", "setting": "lr 1", "steps": 600, "object_id": "a", "mv_psnr": 20.0,
          "3d_psnr": 20.0}]  # fmt: skip
    (tmp_path / "study").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "study/finetune.csv", index=False)
    leads = study.finetune_leads(pd.read_csv(tmp_path / "study/finetune.csv"))
    assert leads["steps"].tolist() == [300]
    row = leads.iloc[0]
    assert row["full 3d_psnr"] == 20 and row["baseline 3d_psnr"] == pytest.approx(58 / 3)
    assert row["lead 3d_psnr"] == pytest.approx(2 / 3) and row["lead mv_psnr"] == pytest.approx(1.0)
    assert row["lead 3d_psnr high"] - row["lead 3d_psnr"] == pytest.approx(4.302653 * (1 / 3) ** 0.5 / 3**0.5, rel=1e-5)
    table = study._study_finetune(tmp_path / "study/finetune.csv")
    assert "| lr 1 | 300 | 20.00 | 19.33 | +0.67 [-0.77, +2.10] | 21.00 | 20.00 | +1.00 [" in table
    assert "not run" in study._study_finetune(tmp_path / "absent.csv")


def test_the_finetune_study_pairs_within_each_setting():
    """Two settings at the same length are two rows, each pairing its own full and baseline runs."""
    rows = [
        {"run": f"{model}, 600 steps, {setting}", "setting": setting, "steps": 600, "object_id": o,
         "mv_psnr": base + lead * (model == "full"), "3d_psnr": 20.0 + lead * (model == "full") + k}
        for setting, base, lead in (("lr 2", 19.0, 0.5), ("lr 0.0001", 20.0, -1.0))
        for model in ("full", "baseline")
        for k, o in enumerate("abc")
    ]  # fmt: skip
    leads = study.finetune_leads(pd.DataFrame(rows)).set_index("setting")
    assert leads.index.tolist() == ["lr 2", "lr 0.0001"]
    assert leads.loc["lr 2", "lead mv_psnr"] == pytest.approx(0.5)
    assert leads.loc["lr 0.0001", "lead 3d_psnr"] == pytest.approx(-1.0)
    assert leads.loc["lr 0.0001", "baseline mv_psnr"] == pytest.approx(20.0)
    assert leads.loc["lr 0.0001", "full 3d_psnr"] == pytest.approx(20.0)


def test_the_sampling_study_pairs_full_and_baseline_per_setting(tmp_path):
    """Leads 0, 1, 1 (mean 2/3) under one sampler, -1 under another; a setting with only the
    full model is left out; copy-input's mean beside."""
    rows = [
        {"model": model, "setting": setting, "object_id": o, "mv_psnr": 20.0 + k + lead * (model == "full"),
         "3d_psnr": d + (setting == "Euler 5") * -(model == "full"), "copy_input_psnr": 19.0 + k}
        for setting, lead in (("churn 10", 0.5), ("Euler 5", 0.0))
        for model, scores in (("full", (20, 21, 22)), ("baseline", (20, 20, 21)))
        for k, (o, d) in enumerate(zip("abc", scores, strict=True))
    ] + [{"model": "full", "setting": "Heun 12", "object_id": "a", "mv_psnr": 20.0, "3d_psnr": 20.0,
          "copy_input_psnr": 19.0}]  # fmt: skip
    (tmp_path / "study").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "study/sampling_finetuned.csv", index=False)
    leads = study.sampling_leads(pd.read_csv(tmp_path / "study/sampling_finetuned.csv")).set_index("setting")
    assert leads.index.tolist() == ["churn 10", "Euler 5"]
    assert leads.loc["churn 10", "lead 3d_psnr"] == pytest.approx(2 / 3)
    assert leads.loc["churn 10", "lead mv_psnr"] == pytest.approx(0.5)
    assert leads.loc["Euler 5", "lead 3d_psnr"] == pytest.approx(-1 / 3)
    assert leads.loc["Euler 5", "copy-input"] == pytest.approx(20.0)
    table = study._study_sampling_finetuned(tmp_path / "study/sampling_finetuned.csv")
    assert "| churn 10 | 21.00 | 20.33 | +0.67 [-0.77, +2.10] | 21.50 | 21.00 | +0.50 [" in table
    assert "not run" in study._study_sampling_finetuned(tmp_path / "absent.csv")


def test_the_report_names_every_sampler_the_params_can_choose(params):
    import dataclasses

    from ouroboros3d.diffusion import edm

    assert set(reporting.SAMPLER_NAMES) == set(edm.SAMPLERS)
    for name in edm.SAMPLERS:
        changed = dataclasses.replace(params, sample=dataclasses.replace(params.sample, sampler=name))
        assert f"steps of {reporting.SAMPLER_NAMES[name]}," in reporting._setup(changed)
