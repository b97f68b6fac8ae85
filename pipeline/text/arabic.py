"""Arabic text normalisation shared by segmentation ids, the cue lexicon and models: the one place where text is
normalised before it is matched or hashed."""

from __future__ import annotations

import re
import unicodedata

# Harakat, tanween, shadda, sukun, dagger alef and Quranic marks.
TASHKEEL = re.compile(r"[\u0610-\u061A\u064B-\u065F\u0670\u06D6-\u06ED]")
TATWEEL = "\u0640"
ARABIC_LETTER = re.compile(r"[\u0621-\u064A\u066E-\u06D3\u06FA-\u06FF]")
WHITESPACE = re.compile(r"\s+")
# Invisible format characters, common in scraped text: soft hyphen, Arabic letter mark, Mongolian vowel separator,
# zero-width space / non-joiner / joiner, left-to-right and right-to-left marks, bidi embeddings and overrides,
# word joiner and invisible operators, bidi isolates, deprecated format controls, zero-width no-break space (BOM).
# They change neither how a sentence reads nor what it says, so matching and ids never see them.
INVISIBLE = re.compile("[\u00AD\u061C\u180E\u200B-\u200F\u202A-\u202E\u2060-\u2064\u2066-\u206F\uFEFF]")


def has_arabic(text: str) -> bool:
    return ARABIC_LETTER.search(text) is not None


def squeeze_spaces(text: str) -> str:
    return WHITESPACE.sub(" ", text).strip()


def strip_invisible(text: str) -> str:
    """`text` without its invisible format characters (INVISIBLE): zero-width and bidi controls."""
    return INVISIBLE.sub("", text)


def is_invisible(char: str) -> bool:
    return INVISIBLE.fullmatch(char) is not None


def normalise_for_id(text: str) -> str:
    """Light normalisation: what a sentence id is computed from, and the base of `normalise_for_matching`.

    Only differences a reader would not call a different sentence are removed (invisible format characters,
    diacritics, tatweel, spacing, Unicode compatibility forms), so ids survive re-encoding, re-spacing and the
    zero-width and bidi controls of scraped text. The text itself (and its offsets) keep them.
    """
    text = unicodedata.normalize("NFKC", strip_invisible(text))
    text = TASHKEEL.sub("", text).replace(TATWEEL, "")
    return squeeze_spaces(text)


def normalise_for_matching(text: str) -> str:
    """Aggressive normalisation for lexicon matching: alef forms, taa marbuta, alef maqsura too."""
    text = normalise_for_id(text)
    text = re.sub("[إأآٱ]", "ا", text)
    text = text.replace("ة", "ه").replace("ى", "ي")
    text = text.replace("ؤ", "و").replace("ئ", "ي")
    return text
