"""The report's verdicts come from paired differences and their intervals, never by hand."""

import pandas as pd
import pytest
from conftest import ROOT, load_script

report = load_script("report")


def _frame(values):
    return pd.DataFrame({"object_id": [f"o{i}" for i in range(len(values))], "x": values}).set_index("object_id")


def test_paired_difference_and_t_interval_by_hand():
    a, b = _frame([3.0, 5.0, 4.0]), _frame([1.0, 2.0, 3.0])
    d = report.paired(a, b, "x")  # differences 2, 3, 1: mean 2, sd 1, t(0.975, 2) = 4.3027
    assert d["n"] == 3 and d["mean"] == pytest.approx(2.0)
    assert d["hi"] - d["mean"] == pytest.approx(4.302653 / 3**0.5, rel=1e-5)
    # only shared objects are paired
    assert report.paired(a, _frame([1.0, 2.0]), "x")["n"] == 2


def test_verdict_needs_the_interval_to_exclude_zero():
    assert report.verdict({"mean": 1.0, "lo": 0.2, "hi": 1.8}, higher_is_better=True) == "better"
    assert report.verdict({"mean": 1.0, "lo": 0.2, "hi": 1.8}, higher_is_better=False) == "worse"
    assert report.verdict({"mean": 1.0, "lo": -0.2, "hi": 2.2}, higher_is_better=True) == "no detectable difference"
    assert report.verdict(None, True) == "not measured"


def test_template_placeholders_must_all_be_filled(tmp_path, params):
    with pytest.raises(KeyError, match="nonsense"):
        report.render_report("{{setup}} {{nonsense}}", params, tmp_path)
    text = report.render_report((ROOT / "paper" / "report_template.md").read_text(), params, tmp_path)
    assert "{{" not in text and "not measured" in text
