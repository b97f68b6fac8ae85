"""Properties of segmentation that must hold for any input (hypothesis)."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given, settings, strategies as st

from pipeline.text.segmentation import SegmentRules, sentence_ids, split_sentences

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


# ---------------------------------------------------------------- invisible format characters (issue 17 item 15)

# Zero-width and bidi controls as scraped text carries them (pipeline.text.arabic.INVISIBLE lists every one removed).
INVISIBLE_CHARS = ["\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d",
                   "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\ufeff", "\u061c", "\u00ad", "\u2060"]


def _seed_sentences() -> list[str]:
    from pipeline.text.segmentation import seed_sentences

    return seed_sentences(RULES)


SEED_SENTENCES = _seed_sentences()


def _lexicon():
    from pipeline.labeling.rules import load_lexicon

    return load_lexicon(Path(__file__).resolve().parent.parent / "labels" / "lexicon.yaml")


LEXICON = _lexicon()


@st.composite
def with_invisible(draw, text: str) -> str:
    """`text` with 1 to 6 invisible characters inserted at any positions (inside words, at the ends, in runs)."""
    chars = list(text)
    for _ in range(draw(st.integers(1, 6))):
        chars.insert(draw(st.integers(0, len(chars))), draw(st.sampled_from(INVISIBLE_CHARS)))
    return "".join(chars)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SEED_SENTENCES).flatmap(lambda s: st.tuples(st.just(s), with_invisible(s))))
def test_invisible_characters_change_neither_rules_nor_ids(pair):
    """Inserting zero-width or bidi controls anywhere in a sentence changes neither the rules that fire on it
    (their ids, label and confidence) nor its sentence id."""
    sentence, scraped = pair
    assert sentence_ids("art", [scraped]) == sentence_ids("art", [sentence])
    clean, dirty = LEXICON.apply(sentence), LEXICON.apply(scraped)
    assert (dirty.fired, dirty.label, dirty.confidence) == (clean.fired, clean.label, clean.confidence)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(SEED_SENTENCES), min_size=1, max_size=6, unique=True), st.data())
def test_an_article_with_invisible_characters_gives_the_same_sentences(sentences, data):
    """Segmented, an article with invisible characters anywhere keeps the same sentence ids, in order; each text
    is the original text at its offsets (the characters kept there)."""
    article = "\n".join(sentences)
    scraped = data.draw(with_invisible(article))
    clean, dirty = split_sentences(article, RULES).sentences, split_sentences(scraped, RULES).sentences
    assert sentence_ids("art", [s.text for s in dirty]) == sentence_ids("art", [s.text for s in clean])
    for s in dirty:
        assert " ".join(scraped[s.start:s.end].split()) == s.text


def test_invisible_characters_in_the_cues_of_a_sentence():
    """The scraped forms that changed rules_fired before: a zero-width space inside a cue word, a bidi mark at a
    word's start, a BOM between words."""
    from pipeline.text.arabic import normalise_for_matching

    sentence = next(s for s in SEED_SENTENCES if LEXICON.apply(s).fired)
    words = sentence.split()
    broken = " ".join(w[:1] + "\u200b" + w[1:] if len(w) > 2 else "\u200f" + w for w in words)
    assert LEXICON.apply(broken).fired == LEXICON.apply(sentence).fired
    assert normalise_for_matching("\ufeffرفض\u200cت") == normalise_for_matching("رفضت")


def test_invisible_characters_at_sentence_ends_do_not_move_the_cuts():
    """A control between a full stop and its closing quote, inside a number, after an abbreviation's letter or
    inside a run of terminators cuts the article where the clean text is cut."""
    clean = "قال الوزير «نعم.» ثم غادر القاعة. بلغ العدد 2.5 مليون. التقى د. أحمد الوفد... ثم عاد؟! انتهى"
    scraped = ("قال الوزير «نعم.\u200f» ثم غادر القاعة.\u200b بلغ العدد 2\u200b.5 مليون. التقى د\u200e. أحمد "
               "الوفد..\u200b. ثم عاد؟\u2069! انتهى")
    before, after = split_sentences(clean, RULES).sentences, split_sentences(scraped, RULES).sentences
    assert len(after) == len(before) == 6
    assert sentence_ids("art", [s.text for s in after]) == sentence_ids("art", [s.text for s in before])
