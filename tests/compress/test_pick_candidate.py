"""The one rule that picks among quantization candidates that pass the gate (auto, the search, per batch size),
judged on tables of candidates: the fastest, unless others tie with it on this timer; then the most faithful."""

from __future__ import annotations

import pytest

from medfm_compress.compress.quantize import AUTO_TIE_PCT, fidelity_key, pick_candidate


def _rows(*rows):
    return [{"name": n, "latency_ms": ms, "top1_agreement": a, "cosine": c} for n, ms, a, c in rows]


def _pick(rows):
    chosen, fastest = pick_candidate(rows, lambda r: r["latency_ms"], lambda r: (*fidelity_key(r), -r["latency_ms"]))
    return chosen["name"], fastest["name"]


@pytest.mark.parametrize("table, chosen, fastest", [
    # A clear winner on time ships, however much more faithful a slower one is.
    ([("int8", 1.0, 0.99, 0.999), ("fp32", 2.0, 1.0, 1.0)], "int8", "int8"),
    # Within the tie margin the more faithful wins: 3% slower fp32 over int8.
    ([("int8", 1.0, 0.99, 0.999), ("fp32", 1.03, 1.0, 1.0)], "fp32", "int8"),
    # Just past the margin the fastest ships again.
    ([("int8", 1.0, 0.99, 0.999), ("fp32", 1.0 + AUTO_TIE_PCT / 100 + 0.001, 1.0, 1.0)], "int8", "int8"),
    # Agreement first, then cosine, then the faster of equals.
    ([("a", 1.00, 0.99, 0.9999), ("b", 1.02, 0.99, 0.99999), ("c", 1.01, 0.98, 1.0)], "b", "a"),
    ([("a", 1.02, 1.0, 1.0), ("b", 1.00, 1.0, 1.0)], "b", "b"),
    # One candidate: itself.
    ([("only", 7.0, 0.995, 0.999)], "only", "only"),
])
def test_the_pick_on_tables_of_candidates(table, chosen, fastest):
    assert _pick(_rows(*table)) == (chosen, fastest)


def test_a_segmentation_candidate_is_judged_by_its_dice_first():
    rows = _rows(("int8", 1.0, 0.999, 0.9999), ("bf16", 1.02, 0.998, 0.9998))
    rows[0]["mean_dice"], rows[1]["mean_dice"] = 0.97, 0.99
    assert _pick(rows) == ("bf16", "int8")


def test_no_candidate_is_an_error():
    with pytest.raises(ValueError, match="no candidate"):
        pick_candidate([], lambda r: 0.0, lambda r: ())
