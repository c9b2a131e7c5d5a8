"""Every image the README and the report show is in git, so a reader sees it without running anything."""

import re
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

DOCUMENTS = ["README.md", "paper/report.md"]


def _tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(out.splitlines())


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_image_link_resolves_to_a_git_tracked_file(document):
    text = (ROOT / document).read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
    assert links, f"{document} shows no images"
    tracked = _tracked()
    base = (ROOT / document).parent
    missing = [link for link in links if str((base / link).resolve().relative_to(ROOT)) not in tracked]
    assert not missing, f"{document} links images that are not in git: {missing}"
    assert all(Path(base / link).is_file() for link in links)


def _uncached_outs() -> list[str]:
    """Every `cache: false` output in dvc.yaml (foreach stages expanded by name)."""
    import yaml

    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    outs = []
    for stage in dvc["stages"].values():
        body = stage.get("do", stage)
        items = [None]
        if "foreach" in stage:
            key = stage["foreach"].strip("${}")
            node = params
            for part in key.split("."):
                node = node[part]
            items = list(node)
        for out in body.get("outs", []) + body.get("metrics", []):
            if isinstance(out, dict):
                ((path, opts),) = out.items()
                if opts.get("cache") is False:
                    outs += [path.replace("${item}", str(i)) for i in items] if "${item}" in path else [path]
    return outs


def test_uncached_outputs_are_not_git_ignored():
    # a `cache: false` output is shared through git alone; a stale DVC .gitignore entry would
    # leave it out of every commit and a clone would see the stage as changed
    outs = _uncached_outs()
    assert "paper/report.md" in outs
    check = subprocess.run(["git", "check-ignore", "--no-index", *outs], cwd=ROOT, capture_output=True, text=True)
    assert check.stdout == "", f"git ignores these cache: false outputs: {check.stdout.split()}"
