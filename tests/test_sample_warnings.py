"""The sample says when it will miss its budget: a target below one document, a budget small for
the documents, a clean source without a share (it used to print `plan OK` and overshoot 11×)."""

from jamdata.stats.warnings import sample_warnings
from jamdata.text.sampling import build_plan, plan_warnings


def test_plan_warns_before_sampling():
    plan = build_plan(
        1000,
        {"c4": 90, "books": 10},
        {"c4": 4, "books": 4},
        {"c4": (50_000, False, None), "books": (110_000, False, None), "arxiv": (9_000, False, None)},
    )
    warnings = plan_warnings(plan, {"c4": 500, "books": 10, "arxiv": 3})
    books = next(w for w in warnings if "'books'" in w)
    assert "target 100 tokens is below one average document (11,000 tokens)" in books and "111.0×" in books
    assert any("'arxiv' has 3 clean documents but no share" in w for w in warnings)
    assert any("over the budget of 1,000" in w for w in warnings)
    assert not any("'c4'" in w for w in warnings)


def test_no_plan_warnings_for_a_roomy_budget():
    plan = build_plan(1_000_000, {"c4": 1}, {"c4": 4}, {"c4": (500_000, False, None)})
    assert plan_warnings(plan, {"c4": 5000}) == []


def test_sample_over_and_under_its_target_is_warned():
    manifest = {
        "summary": {
            "budget_tokens": 2000,
            "sources": {
                "c4": {"target": 100, "tokens": 1100, "documents": 1},  # 11x: one document is 1,100 tokens
                "books": {"target": 1900, "tokens": 400, "documents": 4},  # ran out
            },
        }
    }
    clean = {
        "summary": {
            "funnel": {
                "c4": {"dedup": {"docs_out": 3}},
                "books": {"dedup": {"docs_out": 4}},
                "wiki": {"dedup": {"docs_out": 2}},
            }
        }
    }
    got = {(w["code"], w["source"]) for w in sample_warnings("text-tokens", manifest, clean)}
    assert ("budget_undershoot", "books") in got and ("source_not_sampled", "wiki") in got
    assert ("budget_overshoot", "c4") not in got  # within one document of its target
    exact = {"summary": {"budget_tokens": 100, "sources": {"c4": {"target": 100, "tokens": 200, "documents": 4}}}}
    assert {w["code"] for w in sample_warnings("t", exact, None)} == {"budget_overshoot"}
