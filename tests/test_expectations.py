"""`--expect`: the grammar, the checks made before training, and verdicts on a summary."""

from __future__ import annotations

import polars as pl
import pytest

from lossbench.compare.ci.expectations import (
    Expectation,
    Side,
    Term,
    check_expectations,
    evaluate_expectations,
    needed_metrics,
    parse_expectation,
)
from lossbench.errors import LossbenchError

GROUPS = {("synthetic", "sasrec"): (["bce", "ce", "improved", "./my_loss.py:fn"], "bce")}


def test_the_four_documented_forms() -> None:
    assert parse_expectation("improved > bce") == Expectation(
        "improved > bce", Side(None, Term("improved")), ">", Side(None, Term("bce"))
    )
    significant = parse_expectation("improved > bce significant")
    assert significant.significant and significant.terms == [Term("improved"), Term("bce")]
    threshold = parse_expectation("ndcg@10(improved) >= 0.05")
    assert threshold.left == Side(None, Term("improved", "ndcg@10"))
    assert threshold.operator == ">=" and threshold.right == Side(0.05, None)
    ratio = parse_expectation("hr@10(./my_loss.py:fn) >= 0.9 * hr@10(improved)")
    assert ratio.left.term == Term("./my_loss.py:fn", "hr@10")
    assert ratio.right == Side(0.9, Term("improved", "hr@10"))


def test_spacing_import_strings_and_numbers() -> None:
    tight = parse_expectation("0.5*mrr(pkg.losses:focal)<=bpr-max")
    assert tight.left == Side(0.5, Term("pkg.losses:focal", "mrr"))
    assert tight.operator == "<=" and tight.right.term == Term("bpr-max")
    assert parse_expectation("ce < 1e-1").right == Side(0.1, None)
    assert parse_expectation("improved > bce SIGNIFICANT").significant


def test_arm_labels_with_spaces_are_quoted_or_inside_a_metric() -> None:
    quoted = parse_expectation("'improved shuffled' < \"improved\" significant")
    assert quoted.terms == [Term("improved shuffled"), Term("improved")]
    inside = parse_expectation("hr@10( sampled-ce in-batch logq ) >= 0.9 * hr@10(improved)")
    assert inside.left.term == Term("sampled-ce in-batch logq", "hr@10")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("improved >", "expected a loss or METRIC(loss), found the end"),
        ("improved = bce", "unexpected '='"),
        ("improved bce", "expected a comparison operator"),
        ("ndcg@x(improved) > 0.1", "unknown metric 'ndcg@x'"),
        ("ndcg@10(improved > 0.1", "unexpected '(' at column 8"),
        ("ndcg@10( ) > 0.1", "names no loss"),
        ("0.1 > 0.05", "compares two numbers"),
        ("improved > bce maybe", "unexpected 'maybe'"),
        ("improved >= bce significant", "'significant' compares two losses"),
        ("improved > 0.9 * bce significant", "'significant' compares two losses"),
        ("", "expected a loss"),
    ],
)
def test_malformed_expectations_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(LossbenchError, match="malformed expectation") as error:
        parse_expectation(text)
    assert says in str(error.value)


def test_checked_against_the_comparison_before_training() -> None:
    ok = [parse_expectation(t) for t in ("improved > bce significant", "bce < ce significant")]
    check_expectations(ok, GROUPS, "ndcg@10")
    with pytest.raises(LossbenchError, match="names loss 'sasrec'.*compared: bce, ce"):
        check_expectations([parse_expectation("sasrec > bce")], GROUPS, "ndcg@10")
    with pytest.raises(LossbenchError, match="with the baseline 'bce'"):
        check_expectations([parse_expectation("improved > ce significant")], GROUPS, "ndcg@10")
    with pytest.raises(LossbenchError, match="paired test on ndcg@10"):
        significant_hr = parse_expectation("hr@10(improved) > hr@10(bce) significant")
        check_expectations([significant_hr], GROUPS, "ndcg@10")
    check_expectations([significant_hr], GROUPS, "hr@10")  # the test's metric: fine


def summary(p_improved: float = 1e-4) -> pl.DataFrame:
    """A summary frame as summary.py builds it (bce is the baseline)."""
    return pl.DataFrame(
        {
            "dataset": ["synthetic"] * 3,
            "model": ["sasrec"] * 3,
            "loss": ["bce", "ce", "improved"],
            "baseline": ["bce"] * 3,
            "ndcg@10_mean": [0.30, 0.12, 0.36],
            "hr@10_mean": [0.50, 0.20, 0.52],
            "mean_difference": [None, -0.18, 0.06],
            "p_holm": [None, 2e-4, p_improved],
        }
    )


def judge(*texts: str, frame: pl.DataFrame | None = None) -> list[str]:
    expectations = [parse_expectation(text) for text in texts]
    frame = summary() if frame is None else frame
    verdicts = evaluate_expectations(expectations, frame, GROUPS, "ndcg@10", 0.05)
    return [verdict.line for verdict in verdicts]


def test_verdicts_show_the_numbers_that_decided() -> None:
    assert judge("improved > bce", "bce > improved", "ndcg@10(improved) >= 0.4") == [
        "PASS improved > bce [synthetic/sasrec]: ndcg@10(improved) 0.3600 > ndcg@10(bce) 0.3000",
        "FAIL bce > improved [synthetic/sasrec]: ndcg@10(bce) 0.3000 < ndcg@10(improved) 0.3600",
        "FAIL ndcg@10(improved) >= 0.4 [synthetic/sasrec]: ndcg@10(improved) 0.3600 < 0.4",
    ]
    (ratio,) = judge("hr@10(improved) >= 0.9 * hr@10(bce)")
    assert ratio.endswith("hr@10(improved) 0.5200 > 0.9 * hr@10(bce) 0.5000 = 0.4500")
    assert ratio.startswith("PASS")


def test_significance_uses_the_holm_adjusted_test_in_its_direction() -> None:
    passed, reversed_, worse = judge(
        "improved > bce significant", "bce > improved significant", "ce < bce significant"
    )
    assert passed.startswith("PASS") and "Holm-adjusted p 1.0e-04 < alpha 0.05" in passed
    assert reversed_.startswith("FAIL")
    assert worse.startswith("PASS")  # ce is significantly below the baseline
    (weak,) = judge("improved > bce significant", frame=summary(p_improved=0.2))
    assert weak.startswith("FAIL") and "0.3600 > ndcg@10(bce) 0.3000" in weak
    assert "Holm-adjusted p 0.200 >= alpha 0.05" in weak


def test_a_loss_without_finished_runs_fails_what_names_it() -> None:
    without_improved = summary().filter(pl.col("loss") != "improved")
    held, missing = judge("bce > ce", "improved > bce", frame=without_improved)
    assert held.startswith("PASS")
    assert missing == "FAIL improved > bce [synthetic/sasrec]: no finished run of improved"
    (nothing,) = judge("improved > bce", frame=pl.DataFrame())
    assert nothing.endswith("no finished run of improved, bce")


def test_needed_metrics_resolve_the_default() -> None:
    expectations = [parse_expectation(t) for t in ("a > b", "hr@5(a) > 0.1", "mrr(a) < ndcg@10(b)")]
    assert needed_metrics(expectations, "ndcg@10") == ["ndcg@10", "hr@5", "mrr"]
