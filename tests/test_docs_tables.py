"""The measurement tables in docs/ are generated from benchmarks/results/ (benchmarks/docs_tables.py): none is stale,
none is a hand copy outside the markers, and an edited number is caught."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "benchmarks" / "docs_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_tables_match_their_sources():
    assert _module().stale() == []


def test_every_measurement_table_in_docs_is_generated():
    dt = _module()
    headers = {t.split("\n")[0] for f in (ROOT / "benchmarks" / "results").rglob("*.md")
               for t in dt.markdown_tables(f.read_text(encoding="utf-8"))}
    for page in (ROOT / "docs").glob("*.md"):
        text = page.read_text(encoding="utf-8")
        generated = "".join(m.group("body") for m in dt._BLOCK.finditer(text))
        for table in dt.markdown_tables(text):
            if table.split("\n")[0] in headers:
                assert table in generated, f"{page.name}: a results table copied by hand: {table[:80]}"


def test_an_edited_number_is_stale(tmp_path):
    dt = _module()
    page = next(p for p in sorted((ROOT / "docs").glob("*.md")) if dt._BLOCK.search(p.read_text(encoding="utf-8")))
    body = dt._BLOCK.search(page.read_text(encoding="utf-8")).group("body")
    lines = body.split("\n")
    lines[2] = lines[2].replace("|", "| 9", 1)
    (tmp_path / page.name).write_text(page.read_text(encoding="utf-8").replace(body, "\n".join(lines)), encoding="utf-8")
    stale = dt.stale(tmp_path)
    assert len(stale) == 1 and page.name in stale[0]
    assert dt.render((tmp_path / page.name).read_text(encoding="utf-8")) == page.read_text(encoding="utf-8")


def test_an_empty_marker_is_filled_with_exactly_its_table():
    dt = _module()
    text = "intro\n<!-- table: benchmarks/results/recipes/recipes.md#0 (generated) -->\n<!-- /table -->\nend\n"
    table = dt.source_table("benchmarks/results/recipes/recipes.md", 0)
    assert dt.render(text) == text.replace("-->\n<!-- /table -->", "-->\n" + table + "<!-- /table -->")
    assert dt.render(dt.render(text)) == dt.render(text)
