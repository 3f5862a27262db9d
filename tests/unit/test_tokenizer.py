"""The BM25 analyzer: jieba for CJK runs, NFKC + lowercase + Snowball stemming + stopwords for Latin text."""

from __future__ import annotations

import pytest

from cli.demo import MESSAGES, QUERY
from memos_pipeline.text.tokenizer import CHINESE_STOPWORDS, ENGLISH_STOPWORDS, analyzed, tokenize

pytestmark = pytest.mark.unit


def test_cjk_query_yields_hotel_token() -> None:
    # The demo query must share 酒店 with the windows that talk about hotels, or BM25 cannot bridge them.
    assert "酒店" in tokenize("没住过的酒店品牌")
    assert "酒店" in tokenize(QUERY)
    assert "酒店" in tokenize(MESSAGES[0]["content"])


def test_cjk_brand_names_are_whole_tokens() -> None:
    assert "七天" in tokenize("我选七天")
    tokens = tokenize(MESSAGES[1]["content"])
    assert {"七天", "全季", "希尔顿"} <= set(tokens)
    # No punctuation (【、】) survives as a token.
    assert not any(ch in tok for tok in tokens for ch in "【】、，")


def test_cjk_search_mode_emits_sub_words() -> None:
    assert {"广州", "旅游"} <= set(tokenize("广州旅游"))
    assert tokenize("北京") == ["北京"]


def test_chinese_stopwords_removed_unless_kept() -> None:
    assert "的" not in tokenize("我的酒店")
    assert "的" in tokenize("我的酒店", keep_stopwords=True)
    assert "的" in CHINESE_STOPWORDS


def test_latin_lowercase_and_stemming() -> None:
    assert tokenize("The Running dogs were RUNNING") == ["run", "dog", "run"]
    assert tokenize("Hotels hotel HOTEL") == ["hotel", "hotel", "hotel"]


def test_nfkc_normalisation_of_fullwidth_and_ligatures() -> None:
    assert tokenize("ＡＢＣ Ｒｕｎｎｉｎｇ １２３") == ["abc", "run", "123"]
    assert tokenize("ﬁne") == ["fine"]


def test_english_stopwords_removed_unless_kept() -> None:
    assert tokenize("the and of") == []
    assert tokenize("the and of", keep_stopwords=True) == ["the", "and", "of"]
    assert {"the", "and", "of"} <= ENGLISH_STOPWORDS


def test_apostrophes_join_words() -> None:
    assert tokenize("I don't like the hotels") == ["dont", "like", "hotel"]


def test_digits_are_kept() -> None:
    assert tokenize("flight 2023 at 7 pm, room 404") == ["flight", "2023", "7", "pm", "room", "404"]
    # Dates stay searchable token by token.
    assert tokenize("2024-05-07") == ["2024", "05", "07"]


def test_non_ascii_latin_is_not_stemmed_but_lowercased() -> None:
    assert tokenize("Café CAFÉS") == ["café", "cafés"]


def test_mixed_script_keeps_order_and_duplicates() -> None:
    tokens = tokenize("Running 我选七天 running")
    assert tokens == ["run", "我选", "七天", "run"]


@pytest.mark.parametrize("text", ["", "   ", "，。！？", "--- ...", "\n\t"])
def test_empty_or_punctuation_only(text: str) -> None:
    assert tokenize(text) == []
    assert analyzed(text) == ""


def test_analyzed_joins_tokens_with_single_spaces() -> None:
    out = analyzed("Running   in 2023\n我选七天")
    assert out == "run 2023 我选 七天"
    assert out.split(" ") == tokenize("Running   in 2023\n我选七天")
    assert "  " not in out


def test_deterministic() -> None:
    assert tokenize(QUERY) == tokenize(QUERY)
