"""BM25 over texts no index holds: the rerank API's request, scored in process.

A ``/rerank`` request carries a query and texts, nothing Elasticsearch scored. The
first-stage-aware cross-encoder reads a BM25 feature beside the text; this gives it one, with
Lucene's formula and Elasticsearch's defaults (``k1`` 1.2, ``b`` 0.75), the texts themselves as
the collection (their count, document frequencies and mean length). The words are what the
``standard`` analyzer keeps, near enough for a feature normalised within the window: lower-cased
runs of Unicode word characters.

Written here rather than taken from a BM25 package: the formula is a few lines, the serving
install stays free of scipy, and it must match Lucene's (a package's Okapi variant floors
negative IDF differently, which over a hundred texts that share the query's words is most of
them).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

#: Elasticsearch's BM25 similarity defaults
K1 = 1.2
B = 0.75

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The words of ``text`` as a ``standard`` analyzer would index them (lower-cased)."""
    return _WORD.findall(text.lower())


def bm25_scores(query: str, texts: Sequence[str], *, k1: float = K1, b: float = B) -> np.ndarray:
    """One BM25 score per text for ``query``, the texts as the whole collection. A text that
    shares no word with the query scores 0.0; a repeated query word counts once per
    occurrence, as Lucene sums a term's clauses."""
    documents = [Counter(words(text)) for text in texts]
    lengths = [sum(counts.values()) for counts in documents]
    count = len(documents)
    mean_length = (sum(lengths) / count) if count and sum(lengths) else 1.0
    frequency = Counter(word for counts in documents for word in counts)
    scores = np.zeros(count, dtype=np.float64)
    for word in words(query):
        df = frequency[word]
        if not df:
            continue
        idf = math.log(1.0 + (count - df + 0.5) / (df + 0.5))
        for i, counts in enumerate(documents):
            tf = counts[word]
            if tf:
                norm = k1 * (1.0 - b + b * lengths[i] / mean_length)
                scores[i] += idf * tf / (tf + norm)  # Lucene ≥ 8 drops (k1 + 1)
    return scores
