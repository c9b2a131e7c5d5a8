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
