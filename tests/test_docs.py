"""The documentation: every relative link in README.md, docs/ and bundle/ names a file that exists;
generated tables match their result files."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "bundle").rglob("*.md")]
)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def relative_links(page: Path) -> list[str]:
    """The targets of the page's markdown links outside code blocks, without web links and anchors."""
    text = FENCE.sub("", page.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = [t for t in relative_links(page) if not (page.parent / t.split("#")[0]).exists()]
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_the_link_pattern_finds_links(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        "[a](x.md) ![f](y.png) [w](https://e.org) [h](#s)\n```\n[c](not-a-link.md)\n```\n[b](z.md#part)"
    )
    assert relative_links(page) == ["x.md", "y.png", "z.md#part"]


def _linked(page: Path) -> set[Path]:
    return {(page.parent / t.split("#")[0]).resolve() for t in relative_links(page)}


def test_docs_index_lists_every_page():
    """Every page of docs/ is linked from the index, or from a page the index links (the runs of
    the generated docs/benchmarks/throughput.md)."""
    index = ROOT / "docs" / "index.md"
    listed = _linked(index)
    listed |= {
        p for page in listed if page.suffix == ".md" and page.exists() for p in _linked(page)
    }
    pages = {p.resolve() for p in (ROOT / "docs").rglob("*.md") if p != index}
    assert pages <= listed, sorted(str(p.relative_to(ROOT)) for p in pages - listed)
    assert "docs/index.md" in relative_links(ROOT / "README.md")


@pytest.mark.parametrize(
    "results",
    sorted((ROOT / "docs" / "benchmarks").glob("gpu_settings_*.json")),
    ids=lambda p: p.stem,
)
def test_gpu_settings_tables_are_their_json(results):
    """Each committed table of docs/benchmarks/gpu_settings.py is its ``markdown`` of the JSON file,
    and its choice is the rule's."""
    spec = importlib.util.spec_from_file_location(
        "gpu_settings", results.parent / "gpu_settings.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    result = json.loads(results.read_text())
    assert result["choice"] == script.choose(result["summary"], result["variants"])
    assert results.with_suffix(".md").read_text() == script.markdown(result)
