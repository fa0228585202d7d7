"""The HTML reports (model card, shift report, comparison) escape every value from the data: a class name or a
subgroup value such as ``<script>`` once went into the card as HTML (a table cell starting with ``<`` was taken
for trusted markup), and the review service serves a bundle's card to readers."""

from __future__ import annotations

from markupsafe import Markup

from medsight.evaluation.card import Section, html_table, render_html, subgroup_section

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"


def test_table_cells_from_the_data_are_text_and_marked_cells_are_html() -> None:
    table = html_table([["class", "flag"], [SCRIPT, Markup("<span class='flag'>yes</span>")], [IMG, 3]])
    assert SCRIPT not in table and IMG not in table
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in table and "&lt;img src=x onerror=alert(2)&gt;" in table
    assert "<span class='flag'>yes</span>" in table and "<td>3</td>" in table


def test_a_subgroup_named_like_markup_is_shown_as_its_name() -> None:
    group = {"n": 12, "auc": {"value": 0.8, "ci95": [0.7, 0.9]}}
    gap = {"gap": {"value": 0.2, "ci95": [0.1, 0.3]}, "ci95": [0.1, 0.3], "highest": SCRIPT, "lowest": IMG,
           "p_raw": 0.01, "p_holm": 0.02, "n_comparisons": 1, "flagged": True}  # fmt: skip
    audit = {"site": {"groups": {SCRIPT: group, IMG: group}, "gaps": {"auc": gap}, "min_group_for_gaps": 10}}
    page = render_html("Model card", "intro", [subgroup_section(audit)])
    assert SCRIPT not in page and IMG not in page and "onerror=alert(2)&gt;" in page
    assert "<span class='flag'>yes</span>" in page  # the code's own markup still renders


def test_section_titles_and_figure_captions_are_escaped() -> None:
    page = render_html(SCRIPT, "intro", [Section(IMG, "text")])
    assert SCRIPT not in page and IMG not in page
