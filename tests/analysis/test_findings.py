"""The README's findings: generated from the committed verdicts.csv files, and checked against them."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis import findings
from analysis.experiments import write_verdicts
from analysis.stats import Claim, decide_family, mean_ci

ROOT = Path(__file__).resolve().parents[2]


def _docs(tmp_path):
    claims = decide_family([Claim("A | beats B", mean_ci([0.1] * 10)), Claim("C beats D", mean_ci([0.1, -0.1] * 5))])
    write_verdicts(claims, tmp_path / "docs" / "study_x")
    return tmp_path / "docs"


def test_render_lists_decided_claims_with_their_numbers(tmp_path):
    text = findings.render(_docs(tmp_path))
    assert "| [study_x](docs/study_x/report.md) | A \\| beats B | **yes** | +0.1 [+0.1, +0.1] | 10 | 0.0039 |" in text
    assert "C beats D" not in text  # undecided claims stay in their report
    assert "study_x: 1 of 2 decided" in text


def test_update_readme_rewrites_between_the_markers_and_checks(tmp_path):
    docs = _docs(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\n{findings.BEGIN}\nold\n{findings.END}\n\nrest\n")
    assert findings.update_readme(readme, docs, check=True) is False and "old" in readme.read_text()
    assert findings.update_readme(readme, docs) is False
    assert findings.update_readme(readme, docs, check=True) is True
    text = readme.read_text()
    assert text.startswith("# T\n") and text.endswith("\n\nrest\n") and "A \\| beats B" in text
    (tmp_path / "bare.md").write_text("no markers")
    with pytest.raises(ValueError, match="no findings markers"):
        findings.update_readme(tmp_path / "bare.md", docs)


def test_the_readme_findings_match_the_committed_reports():
    """Fails when a report's verdicts.csv changed and `testbed findings` was not rerun."""
    assert findings.update_readme(ROOT / "README.md", ROOT / "docs", check=True), \
        "README.md's findings are out of date: run `testbed findings`"


def test_the_opening_figure_is_drawn_from_the_headline_scores(tmp_path):
    docs = _docs(tmp_path)
    assert findings.write_figure(docs) is None and "![" not in findings.render(docs)  # no headline: no figure
    head = "env,method,tokens_saved_pct,tokens_saved_pct_lo,tokens_saved_pct_hi,nostop_vs_ppo,nostop_vs_ppo_lo,nostop_vs_ppo_hi\n"
    (docs / "espo_headline").mkdir()
    (docs / "espo_headline" / "scores.csv").write_text(head + "default,ppo,,,,,,\ndefault,espo,9,8,10,-0.1,-0.2,0.0\n")
    write_verdicts(decide_family([Claim("E saves", mean_ci([0.2] * 10))]), docs / "espo_headline")
    out = findings.write_figure(docs)
    assert out == docs / findings.FIGURE and out.stat().st_size > 1000
    text = findings.render(docs)
    assert f"![ESPO's trade-off](docs/{findings.FIGURE})" in text and findings.CAPTION in text
    # a bigger version of the headline, once committed, is drawn and listed instead
    (docs / "espo_headline_full").mkdir()
    (docs / "espo_headline_full" / "scores.csv").write_text(head + "trap,espo,3,2,4,-0.05,-0.1,0.0\n")
    write_verdicts(decide_family([Claim("F saves", mean_ci([0.3] * 10))]), docs / "espo_headline_full")
    text = findings.render(docs)
    assert "F saves" in text and "E saves" not in text and "espo_headline (see espo_headline_full)" in text


def test_every_claim_of_the_short_table_is_in_the_committed_reports():
    text = findings.render(ROOT / "docs")
    assert "(missing" not in text, "a claim of findings.SHORT is not in its report's verdicts.csv"
    assert text.count("docs/espo_headline_full/report.md") >= len([s for s, _ in findings.SHORT if s == "espo_headline_full"])


def test_a_full_subfolder_supersedes_its_study(tmp_path):
    docs = _docs(tmp_path)
    write_verdicts(decide_family([Claim("G beats H", mean_ci([0.2] * 10))]), docs / "study_x" / "full")
    text = findings.render(docs)
    assert "| [study_x_full](docs/study_x/full/report.md) | G beats H | **yes** |" in text
    assert "A \\| beats B" not in text and "study_x (see study_x_full)" in text and "study_x_full: 1 of 1 decided" in text


def test_a_confirm_subfolder_is_listed_beside_its_study(tmp_path):
    docs = _docs(tmp_path)
    write_verdicts(decide_family([Claim("G beats H", mean_ci([0.2] * 10))]), docs / "study_x" / "confirm")
    text = findings.render(docs)
    assert "| [study_x_confirm](docs/study_x/confirm/report.md) | G beats H | **yes** |" in text
    assert "A \\| beats B" in text  # the study's own report is still listed: a confirmation supersedes nothing
