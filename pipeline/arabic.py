"""Arabic text normalisation shared by segmentation ids, the cue lexicon and models."""

from __future__ import annotations

import re
import unicodedata

# Harakat, tanween, shadda, sukun, dagger alef and Quranic marks.
TASHKEEL = re.compile(r"[\u0610-\u061A\u064B-\u065F\u0670\u06D6-\u06ED]")
TATWEEL = "\u0640"
ARABIC_LETTER = re.compile(r"[\u0621-\u064A\u066E-\u06D3\u06FA-\u06FF]")
WHITESPACE = re.compile(r"\s+")


def has_arabic(text: str) -> bool:
    return ARABIC_LETTER.search(text) is not None


def squeeze_spaces(text: str) -> str:
    return WHITESPACE.sub(" ", text).strip()


def normalise_for_id(text: str) -> str:
    """Light normalisation: what a sentence id is computed from.

    Only differences a reader would not call a different sentence are removed (diacritics,
    tatweel, spacing, Unicode compatibility forms), so ids survive re-encoding and re-spacing.
    """
    text = unicodedata.normalize("NFKC", text)
    text = TASHKEEL.sub("", text).replace(TATWEEL, "")
    return squeeze_spaces(text)


def normalise_for_matching(text: str) -> str:
    """Aggressive normalisation for lexicon matching: alef forms, taa marbuta, alef maqsura too."""
    text = normalise_for_id(text)
    text = re.sub("[إأآٱ]", "ا", text)
    text = text.replace("ة", "ه").replace("ى", "ي")
    text = text.replace("ؤ", "و").replace("ئ", "ي")
    return text
