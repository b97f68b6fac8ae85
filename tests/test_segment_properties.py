"""Properties of segmentation that must hold for any input (hypothesis)."""

from __future__ import annotations

import re

from hypothesis import given, settings, strategies as st

from pipeline.segmentation import SegmentRules, sentence_ids, split_sentences

ARABIC = "ابتثجحخدذرزسشصضطظعغفقكلمنهويءأإآةى"
ALPHABET = ARABIC + "0123456789" + " \t\n\r" + ".!?؟…،؛:\"'”“«»()[]-" + "abc"
RULES = SegmentRules(boilerplate_patterns=("^نهاية الرسالة$",))


def non_space(text: str) -> str:
    return re.sub(r"\s+", "", text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=300))
def test_kept_text_is_the_original_text_in_order(text):
    seg = split_sentences(text, RULES)
    previous_end = 0
    for s in seg.sentences:
        assert previous_end <= s.start < s.end <= len(text)          # in order, no overlap
        assert non_space(text[s.start:s.end]) == non_space(s.text)   # nothing lost, nothing reordered
        assert " ".join(text[s.start:s.end].split()) == s.text       # offsets point at the text
        assert re.search(r"\w", s.text)                               # never only punctuation
        assert s.text == s.text.strip() and "  " not in s.text
        previous_end = s.end


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=300))
def test_whitespace_is_all_that_is_dropped_between_kept_sentences(text):
    """Concatenated, the kept sentences are a subsequence of the article's non-space characters."""
    kept = "".join(non_space(s.text) for s in split_sentences(text, RULES).sentences)
    it = iter(non_space(text))
    assert all(ch in it for ch in kept)


arabic_sentence = st.lists(st.sampled_from(ARABIC), min_size=3, max_size=12).map("".join).flatmap(
    lambda w: st.lists(st.sampled_from([w, w[::-1], w[:3], w[1:]]), min_size=2, max_size=6).map(" ".join)
).map(lambda s: s + ".")


@settings(max_examples=200, deadline=None)
@given(st.lists(arabic_sentence, min_size=2, max_size=8, unique=True), st.data())
def test_ids_are_stable_when_unrelated_sentences_change(sentences, data):
    before = dict(zip(sentences, sentence_ids("art", sentences)))
    i = data.draw(st.integers(0, len(sentences) - 1))
    replacement = data.draw(arabic_sentence.filter(lambda s: s not in sentences))
    edited = sentences[:i] + [replacement] + sentences[i + 1:]
    inserted = sentences[:i] + [replacement] + sentences[i:]
    for changed in (edited, inserted, list(reversed(sentences))):
        after = dict(zip(changed, sentence_ids("art", changed)))
        for text, sid in after.items():
            if text in before:
                assert before[text] == sid


def test_ids_ignore_diacritics_and_spacing_but_not_the_article():
    assert sentence_ids("a", ["قَالَ  الوزير."]) == sentence_ids("a", ["قال الوزير."])
    assert sentence_ids("a", ["قال الوزير."]) != sentence_ids("b", ["قال الوزير."])
    first, second = sentence_ids("a", ["نعم.", "نعم."])
    assert first != second
