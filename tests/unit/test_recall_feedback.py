from evaluation import recall_feedback as feedback

TEXTS = {
    "seed": "Melanie: my kids Luna and Oliver love the pottery class",
    "lead": "Melanie: Oliver painted a sunset at the pottery studio",
    "other": "Melanie: work was busy this week",
    "plain": "Melanie: I went running this morning",
    "more": "Melanie: the weather was nice",
}


def test_feedback_terms_are_rare_and_not_in_the_query() -> None:
    ranked = ["seed", "lead", "other", "plain", "more"]
    fb, toks = feedback.feedback_terms(ranked, TEXTS.get, "What do Melanie's kids like?", seed=1, n_terms=10)
    assert "luna" in fb and "oliv" in fb  # stemmed, as BM25 analyses them
    assert "melani" not in fb  # in every candidate (speaker) and in the query
    assert "kid" not in fb  # asked for
    assert set(toks) == set(ranked)


def test_boost_raises_candidates_sharing_rare_terms_of_the_top_hit() -> None:
    scores = {"seed": 0.9, "other": 0.5, "lead": 0.45, "plain": 0.4, "more": 0.3}
    out = feedback.boost(scores, TEXTS.get, "What do Melanie's kids like?", weight=0.3, seed=1, n_terms=20)
    assert out["seed"] == scores["seed"]
    assert out["lead"] > out["other"]
    assert out["other"] == scores["other"] and out["more"] == scores["more"]


def test_boost_without_weight_or_texts_changes_nothing() -> None:
    scores = {"a": 0.5, "b": 0.4}
    assert feedback.boost(scores, TEXTS.get, "q", weight=0.0) == scores
    assert feedback.boost(scores, lambda i: None, "q", weight=0.1) == scores
    assert feedback.boost({}, TEXTS.get, "q", weight=0.1) == {}


def test_entity_terms_keep_capitalised_words_not_opening_a_sentence() -> None:
    got = feedback.entity_terms("Melanie: my kids Luna and Oliver went to Paris. Yes, it was fun")
    assert {"luna", "oliv", "pari"} <= got
    assert "yes" not in got and "kid" not in got
