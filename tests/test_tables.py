"""Table 2 and Table 3 from evaluation runs' metrics.json (ouroboros3d.reporting.tables), on hand-made runs."""

from __future__ import annotations

import pytest

from ouroboros3d.reporting import tables


def _run(name, *, start=0.0, joint=True, maps=("ccm", "rgb"), variant="main", psnr=20.0, summary=None):
    """The parts of an experiments/evaluate.py metrics.json that the tables read."""
    stats = {"mean": psnr, "ci_low": psnr - 0.5, "ci_high": psnr + 0.5, "n": 4}
    return {
        "name": name,
        "variant": variant,
        "model": {"feedback": bool(maps), "feedback_maps": list(maps), "joint": joint, "resolution": 32},
        "sample": {"feedback_start": start, "steps": 25},
        "objects": 4,
        "protocol": {"fscore_thresholds": [0.05], "interval": "95% t-interval over objects"},
        "summary": summary if summary is not None else {"3d_psnr": stats, "mv_psnr": stats},
        "unavailable": {},
    }


def test_cell_is_the_mean_and_half_width_at_the_metric_precision():
    report = _run("main", summary={})
    report["summary"] = {
        "3d_psnr": {"mean": 20.1234, "ci_low": 19.0, "ci_high": 21.5},
        "3d_ssim": {"mean": 0.81234, "ci_low": 0.8, "ci_high": 0.82},
        "fscore@0.05": {"mean": 0.5, "ci_low": None, "ci_high": None},  # one object: no interval
        "cd": {"mean": None},
    }
    report["unavailable"] = {"lpips": {"status": "unavailable"}}
    assert tables.cell(report, "3d_psnr") == "20.12 ± 1.25"
    assert tables.cell(report, "3d_ssim") == "0.8123 ± 0.0100"
    assert tables.cell(report, "fscore@0.05") == "0.500"
    assert tables.cell(report, "cd") == "–"
    assert tables.cell(report, "3d_lpips") == "unavailable"  # not computed here, and the run says why
    assert tables.cell(report, "mv_psnr") == "–"  # not in this run
    assert tables.cell(None, "3d_psnr") == "–"  # no run


def test_window_label_counts_steps_and_names_no_feedback():
    assert tables.window_label(0.0, 25) == "steps 0-25"
    assert tables.window_label(0.4, 25) == "steps 10-25"
    assert tables.window_label(1.0, 25) == "no feedback"


def test_table3_orders_the_windows_and_keeps_the_first_of_a_repeated_one():
    runs = {
        "main": _run("main", start=0.0, psnr=21.0),
        "main-fs0.0": _run("main-fs0.0", start=0.0, psnr=5.0),  # the same window again
        "main-fs1.0": _run("main-fs1.0", start=1.0, psnr=19.0),
        "main-fs0.4": _run("main-fs0.4", start=0.4, psnr=20.0),
        "baseline": _run("baseline", start=0.4, variant="baseline"),  # another model: not Table 3's
    }
    shown, numbers = tables.table3(runs)
    windows = numbers[numbers.setting.str.contains("start")]
    assert list(windows.run) == ["main", "main-fs0.4", "main-fs1.0"]
    assert list(windows["3d_psnr_mean"]) == [21.0, 20.0, 19.0]
    assert list(windows.paper_3d_psnr[:2]) == [21.761, 21.633]  # the paper has no no-feedback row
    assert shown.setting[2] == "no feedback (start 1)"
    # then the references and baselines of the main run, the oracle last
    assert list(shown.setting[3:]) == [*tables.REFERENCE_ROWS.values(), "oracle geometry: ground-truth depth points"]
    assert set(shown.run[3:]) == {"main"}


def test_table2_places_runs_by_their_switches():
    variants = {"baseline": (False, ()), "full": (True, ("ccm", "rgb"))}
    runs = {"main": _run("main"), "baseline": _run("baseline", joint=False, maps=(), variant="baseline")}
    shown, _ = tables.table2(runs, variants)
    assert list(shown.run[:2]) == ["baseline", "main"]  # `full` has main's switches: main's run
    assert list(shown.setting[:2]) == ["no joint training, no feedback", "joint + CCM + RGB"]
    # a main model whose switches no variant has gets a row of its own; a variant never run says so
    runs["main"] = _run("main", maps=("rgb",))
    shown, _ = tables.table2(runs, variants)
    assert list(shown.run[:3]) == ["baseline", "full (not evaluated)", "main"]
    assert shown.setting[2] == "main model (params' switches)"


def test_variant_switches_follow_the_params(params):
    switches = tables.variant_switches(params)
    assert switches["baseline"] == (False, ())
    assert switches["joint"] == (True, ())
    assert switches["ccm"] == (True, ("ccm",))
    assert switches["full"] == (True, ("ccm", "rgb"))
    assert list(switches) == list(params.variants)  # rows in params order


def test_table_files_have_the_title_the_notes_and_the_numbers():
    runs = {"main": _run("main")}
    table2, table3 = tables.build_tables(runs, {"full": (True, ("ccm", "rgb"))})
    assert (table2.stem, table3.stem) == ("table2_ablation", "table3_feedback_window")
    notes = tables.protocol_notes(runs)
    assert notes.startswith("Ours: 4 eval objects at 32², 25 sampling steps")
    text = table2.markdown(notes)
    assert text.startswith(f"# {table2.title}\n\n| setting | run |") and text.endswith(notes)
    csv = table2.csv()  # the numbers behind the cells, not their display strings
    assert csv.startswith("setting,run,objects,3d_psnr_mean,3d_psnr_ci_low,3d_psnr_ci_high,paper_3d_psnr,")
    assert "\njoint + CCM + RGB,main,4.0,20.0,19.5,20.5,21.761," in csv and "\r" not in csv
    assert tables.protocol_notes({}) == "No evaluation results found.\n"


def test_load_runs_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder of evaluation runs"):
        tables.load_runs(tmp_path / "nowhere")
