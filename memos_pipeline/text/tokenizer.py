"""The BM25 analyzer: every backend indexes and queries the same tokens, produced here.

CJK runs are segmented by jieba (search mode, so 广州旅游 also yields 广州 and 旅游); Latin text is NFKC-normalised,
lowercased, stripped of English stopwords and Snowball-stemmed. Digits are kept: dates and numbers are often the
very evidence a memory query is after.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata

import jieba
import Stemmer

jieba.setLogLevel(logging.WARNING)

# Runs of CJK ideographs (incl. extension A and compatibility), kana, hangul; everything else is split on non-word.
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_SEGMENT = re.compile(rf"([{_CJK}]+)|([^\W_]+(?:'[^\W_]+)?)", re.UNICODE)
_CJK_PUNCT_OR_SPACE = re.compile(r"^\s*$")

ENGLISH_STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
    off on once only or other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up very was we were what
    when where which while who whom why will with would you your yours yourself yourselves s t d ll m re ve""".split()
)
# A few very frequent Chinese function words that carry no retrieval signal.
CHINESE_STOPWORDS = frozenset(
    "的 了 和 是 就 都 而 及 与 着 或 一个 没有 我们 你们 他们 吗 呢 吧 啊 么 个 有 在 也 要 会 这 那".split()
)


@functools.cache
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def tokenize(text: str, *, keep_stopwords: bool = False) -> list[str]:
    """Analyzer tokens of ``text`` in order (duplicates kept: BM25 needs term frequencies)."""
    text = unicodedata.normalize("NFKC", text).lower()
    stem = _stemmer().stemWord
    out: list[str] = []
    for match in _SEGMENT.finditer(text):
        cjk, word = match.group(1), match.group(2)
        if cjk:
            for tok in jieba.cut_for_search(cjk):
                if _CJK_PUNCT_OR_SPACE.match(tok):
                    continue
                if keep_stopwords or tok not in CHINESE_STOPWORDS:
                    out.append(tok)
        else:
            word = word.replace("'", "")
            if not keep_stopwords and word in ENGLISH_STOPWORDS:
                continue
            out.append(stem(word) if word.isascii() and word.isalpha() else word)
    return out


def analyzed(text: str) -> str:
    """Tokens joined by single spaces: the pre-tokenised form stored in a whitespace-analysed index field."""
    return " ".join(tokenize(text))
