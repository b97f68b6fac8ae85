"""Weak stance labels from an Arabic cue lexicon (`labels/lexicon.yaml`).

How a sentence is scored:
  1. The sentence and every lexicon phrase are normalised the same way (`normalise_for_matching`: tashkeel,
     tatweel, alef forms, taa marbuta, alef maqsura) and split into word and punctuation tokens.
  2. Phrases are matched token by token; a text token may carry a proclitic (و ف ب ل ك ال …) that the phrase
     does not spell, and a phrase token ending in `*` matches any ending (رفض* → رفضت، رفضها). Longer matches win
     and a token serves one cue only, so «تهدئة التوترات» is de-escalation, not "tension".
  3. Negation: a negator (لا، لم، لن، ليس، غير، عدم …) up to `negation.window` tokens before a cue, with no clause
     punctuation in between, flips the cue (positive ↔ negative) or cancels it, as the cue's `on_negation` says.
     Fixed expressions that start with a negator but do not negate («لا يزال» still) are listed as `not_negation`.
  4. Contrast: after the last contrast marker (لكن، إلا أن، غير أن …) the clause dominates — cue weights there are
     multiplied by `contrast.after`, weights before it by `contrast.before`.
  5. Class scores are summed; the top class wins. No cue at all, or a positive/negative tie, abstains.

Each result carries the rule ids that fired (`neg.refusal`, `pos.progress:negated`, `contrast`) and a confidence
in (0, 1]: the winning class's share of the evidence, damped when the evidence is thin.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
import yaml

from pipeline import LABELS
from pipeline.text.arabic import normalise_for_matching
from pipeline.core.errors import PipelineError
from pipeline.core.io import read_text_strict

TOKEN = re.compile(r"\w+|[^\w\s]")
WORD = re.compile(r"\w+")
FLIP = {"positive": "negative", "negative": "positive"}
ANY_WORD = "_"          # in a phrase: any one word (Arabic puts the subject between verb and object: ترفض روسيا الاتهامات)
NEGATION_MODES = ("flip", "cancel", "ignore")


class LexiconError(PipelineError):
    pass


def tokenize(text: str) -> list[str]:
    """Normalised word and punctuation tokens."""
    return TOKEN.findall(normalise_for_matching(text))


@dataclass(frozen=True)
class Cue:
    id: str
    label: str
    weight: float
    phrases: tuple[tuple[str, ...], ...]   # normalised token patterns; a token ending in "*" is a prefix
    on_negation: str = "flip"


@dataclass
class Firing:
    cue: Cue
    start: int            # token span in the sentence
    end: int
    negated: bool = False
    after_contrast: bool | None = None   # None: the sentence has no contrast marker

    @property
    def label(self) -> str | None:
        """The class this firing votes for, after negation; None when negation cancels it."""
        if not self.negated or self.cue.on_negation == "ignore":
            return self.cue.label
        if self.cue.on_negation == "cancel" or self.cue.label not in FLIP:
            return None
        return FLIP[self.cue.label]

    @property
    def rule_id(self) -> str:
        if not self.negated or self.cue.on_negation == "ignore":
            return self.cue.id
        return f"{self.cue.id}:negated" if self.label else f"{self.cue.id}:cancelled"


@dataclass(frozen=True)
class CueMatch:
    rule_id: str              # as in rules_fired: `neg.refusal`, `pos.progress:negated`
    label: str | None         # the class it votes for after negation; None = cancelled by a negation
    words: str                # the sentence's words that matched, as written
    negated: bool = False


EDGE_PUNCTUATION = re.compile(r"^[^\w]+|[^\w]+$")  # quotes, commas, full stops around the matched words


@dataclass
class RuleResult:
    label: str | None                   # None = abstain
    confidence: float                   # 0 when abstained
    fired: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class Lexicon:
    cues: list[Cue]
    negators: frozenset[str]
    adjacent_negators: frozenset[str]       # negate only the very next word (غير مسبوق)
    not_negation: tuple[tuple[str, ...], ...]
    negation_window: int
    clause_breaks: frozenset[str]
    contrast_markers: tuple[tuple[str, ...], ...]
    contrast_before: float
    contrast_after: float
    proclitics: tuple[tuple[str, ...], ...]   # slots in order; each may be absent
    confidence_scale: float
    source: str = "<memory>"

    def __post_init__(self):
        # Index of phrases by their first token, so a sentence is matched against the few phrases that can
        # start at each word rather than all of them (the lexicon grows; corpora are large).
        self._phrases = sorted(((len(p), c, p) for c in self.cues for p in c.phrases), key=lambda x: -x[0])
        self._by_exact: dict[str, list[int]] = {}
        self._by_stem: dict[str, list[int]] = {}
        self._any_first: list[int] = []
        for n, (_, _, pattern) in enumerate(self._phrases):
            first = pattern[0]
            if first == ANY_WORD:
                self._any_first.append(n)
            elif first.endswith("*"):
                self._by_stem.setdefault(first[:-1], []).append(n)
            else:
                self._by_exact.setdefault(first, []).append(n)
        self._stem_lengths = sorted({len(s) for s in self._by_stem})

    def _candidates_at(self, forms: set[str]) -> set[int]:
        found = set(self._any_first)
        for f in forms:
            found.update(self._by_exact.get(f, ()))
            for k in self._stem_lengths:
                if k > len(f):
                    break
                found.update(self._by_stem.get(f[:k], ()))
        return found

    # ---- loading -------------------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: Path | str) -> "Lexicon":
        path = Path(path)
        try:
            data = yaml.safe_load(read_text_strict(path))
        except yaml.YAMLError as exc:
            raise LexiconError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        except PipelineError as exc:
            raise LexiconError(f"{exc}; labeling.lexicon must point at the cue lexicon YAML") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "<memory>") -> "Lexicon":
        if not isinstance(data, dict) or "cues" not in data:
            raise LexiconError(f"{source}: a lexicon needs a top-level 'cues' mapping (label → list of cues)")
        cues: list[Cue] = []
        seen_ids: set[str] = set()
        default_negation = str(data.get("negation", {}).get("default", "flip"))
        for label, entries in (data.get("cues") or {}).items():
            if label not in LABELS:
                raise LexiconError(f"{source}: unknown class {label!r} under 'cues'; use {', '.join(LABELS)}")
            for entry in entries or []:
                cue_id = str(entry.get("id", ""))
                if not cue_id or cue_id in seen_ids:
                    raise LexiconError(f"{source}: every cue needs a unique 'id' (problem: {cue_id!r} in {label})")
                seen_ids.add(cue_id)
                mode = str(entry.get("on_negation", default_negation if label in FLIP else "ignore"))
                if mode not in NEGATION_MODES:
                    raise LexiconError(f"{source}: cue {cue_id}: on_negation={mode!r}; use {', '.join(NEGATION_MODES)}")
                phrases = tuple(_pattern(p) for p in entry.get("phrases") or [])
                phrases = tuple(p for p in phrases if p)
                if not phrases:
                    raise LexiconError(f"{source}: cue {cue_id} has no phrases")
                try:
                    weight = float(entry.get("weight", 1.0))
                except (TypeError, ValueError):
                    raise LexiconError(f"{source}: cue {cue_id}: weight must be a number") from None
                cues.append(Cue(cue_id, label, weight, phrases, mode))
        negation = data.get("negation") or {}
        contrast = data.get("contrast") or {}
        return cls(
            cues=cues,
            negators=frozenset(normalise_for_matching(w) for w in negation.get("negators", [])),
            adjacent_negators=frozenset(normalise_for_matching(w) for w in negation.get("adjacent_only", [])),
            not_negation=tuple(p for p in (_pattern(x) for x in negation.get("not_negation", [])) if p),
            negation_window=int(negation.get("window", 3)),
            clause_breaks=frozenset(negation.get("clause_breaks", ["،", ",", "؛", ";", ":", ".", "!", "?", "؟"])),
            contrast_markers=tuple(p for p in (_pattern(x) for x in contrast.get("markers", [])) if p),
            contrast_before=float(contrast.get("before", 0.5)),
            contrast_after=float(contrast.get("after", 2.0)),
            proclitics=_proclitic_slots(data.get("proclitics", []), source),
            confidence_scale=float(data.get("confidence_scale", 1.5)),
            source=source,
        )

    # ---- matching ------------------------------------------------------------------------------------------
    def _forms(self, token: str) -> set[str]:
        """The token itself and the token without the proclitics it may carry, slot by slot in Arabic order
        (conjunction, then preposition, then article: و + ب + ال in «وبالرفض»), keeping at least 2 letters.
        The order matters: «الكامل» loses ال but never the ك of its root after it."""
        forms = {token}
        for slot in self.proclitics:
            forms |= {f[len(p):] for f in forms for p in slot if f.startswith(p) and len(f) - len(p) >= 2}
        return forms

    def _token_matches(self, pattern_token: str, forms: set[str]) -> bool:
        if pattern_token == ANY_WORD:
            return any(WORD.fullmatch(f) for f in forms)
        if pattern_token.endswith("*"):
            stem = pattern_token[:-1]
            return any(f.startswith(stem) for f in forms)
        return pattern_token in forms

    def _match_at(self, pattern: tuple[str, ...], forms: list[set[str]], i: int) -> bool:
        if i + len(pattern) > len(forms):
            return False
        return all(self._token_matches(p, forms[i + k]) for k, p in enumerate(pattern))

    def _is_negator(self, forms: set[str]) -> bool:
        return bool(forms & (self.negators | self.adjacent_negators))

    def apply(self, text: str) -> RuleResult:
        firings, contrast_at = self._firings(text)
        scores = {label: 0.0 for label in LABELS}
        fired: list[str] = []
        for f in firings:
            fired.append(f.rule_id)
            label = f.label
            if label is None:
                continue
            factor = 1.0
            if f.after_contrast is True:
                factor = self.contrast_after
            elif f.after_contrast is False:
                factor = self.contrast_before
            scores[label] += f.cue.weight * factor
        if contrast_at is not None and firings:
            fired.append("contrast")
        return self._decide(scores, fired)

    def cue_matches(self, text: str) -> list[CueMatch]:
        """The cues that fired on `text`, in order: rule id, the class each votes for after negation (None when
        cancelled), and the sentence's own words that matched (as written, for people to read)."""
        firings, _ = self._firings(text)
        words = text.split()
        owner: list[int] = []  # token index -> index of the whitespace word it came from
        for n, word in enumerate(words):
            owner.extend([n] * len(tokenize(word)))
        out = []
        for f in firings:
            if len(owner) >= f.end:
                shown = " ".join(words[owner[f.start]:owner[f.end - 1] + 1])
                shown = EDGE_PUNCTUATION.sub("", shown) or shown
            else:  # a word that normalises across spaces (not seen in practice): the matched tokens instead
                shown = " ".join(tokenize(text)[f.start:f.end])
            out.append(CueMatch(f.rule_id, f.label, shown, f.negated))
        return out

    def _firings(self, text: str) -> tuple[list[Firing], int | None]:
        """The cue firings of a sentence in order of position (negation and contrast decided), and the token
        index of its last contrast marker (None without one)."""
        tokens = tokenize(text)
        forms = [self._forms(t) if WORD.fullmatch(t) else {t} for t in tokens]

        # Contrast: the last marker splits the sentence; its own tokens are not cue material.
        used = [False] * len(tokens)
        contrast_at = None
        for i in range(len(tokens)):
            for marker in self.contrast_markers:
                if self._match_at(marker, forms, i):
                    contrast_at = i
                    for k in range(i, i + len(marker)):
                        used[k] = True

        # Expressions that begin with a negator but negate nothing (لا يزال) block negation at their start.
        blocked_negators = set()
        for i in range(len(tokens)):
            for pattern in self.not_negation:
                if self._match_at(pattern, forms, i):
                    blocked_negators.add(i)

        # Longest phrases first, so one token is claimed by the most specific cue.
        # Every phrase that matches anywhere, found through the first-token index; then the longest phrases
        # (ties: lexicon order, then position) claim their tokens, so one token serves the most specific cue.
        matches = []
        for i in range(len(tokens)):
            for n in self._candidates_at(forms[i]):
                length, cue, pattern = self._phrases[n]
                if self._match_at(pattern, forms, i):
                    matches.append((-length, n, i))
        firings: list[Firing] = []
        for neg_length, n, i in sorted(matches):
            end = i - neg_length
            if any(used[i:end]):
                continue
            for k in range(i, end):
                used[k] = True
            firings.append(Firing(self._phrases[n][1], i, end))

        for f in firings:
            f.negated = self._negated_before(tokens, forms, f, blocked_negators | _claimed(used, firings, f))
            if contrast_at is not None:
                f.after_contrast = f.start > contrast_at
        return sorted(firings, key=lambda f: f.start), contrast_at

    def _negated_before(self, tokens: list[str], forms: list[set[str]], firing: Firing, blocked: set[int]) -> bool:
        start = firing.start
        if self._coordinated(tokens[start], firing):
            # «لا نهاية له وخطيرا»: a new conjunct (و…) leaves the negation behind unless it repeats it (ولا).
            return False
        for j in range(start - 1, max(-1, start - 1 - self.negation_window), -1):
            if tokens[j] in self.clause_breaks:
                return False
            if j in blocked:
                continue
            if forms[j] & self.adjacent_negators:
                if j == start - 1:
                    return True
                continue
            if self._is_negator(forms[j]):
                return True
        return False

    def _coordinated(self, token: str, firing: Firing) -> bool:
        if not token.startswith("و") or len(token) < 4:
            return False
        # The cue matched only through the stripped form: the و is a conjunction, not a root letter.
        return not any(self._token_matches(p[0], {token}) for p in firing.cue.phrases)

    def _decide(self, scores: dict[str, float], fired: list[str]) -> RuleResult:
        total = sum(scores.values())
        if total <= 0:
            return RuleResult(None, 0.0, fired, scores)
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])
        (top_label, top), (_, second) = ranked[0], ranked[1]
        if top == second:  # e.g. as much toward as away: let gold, annotators or the abstain policy decide
            return RuleResult(None, 0.0, fired, scores)
        confidence = (top / total) * (1.0 - math.exp(-top / self.confidence_scale))
        return RuleResult(top_label, round(confidence, 4), fired, scores)

    # ---- batch ---------------------------------------------------------------------------------------------
    def label_texts(self, texts: Iterable[str]) -> pd.DataFrame:
        """rule_label (None = abstain), rule_confidence, rules_fired for each text."""
        rows = []
        for text in texts:
            r = self.apply(text)
            rows.append({"rule_label": r.label, "rule_confidence": float(r.confidence), "rules_fired": ";".join(r.fired)})
        return pd.DataFrame({
            "rule_label": pd.Series([r["rule_label"] for r in rows], dtype="object"),
            "rule_confidence": pd.Series([r["rule_confidence"] for r in rows], dtype="float64"),
            "rules_fired": pd.Series([r["rules_fired"] for r in rows], dtype="object"),
        })


def _proclitic_slots(spec, source: str) -> tuple[tuple[str, ...], ...]:
    """`[[و, ف], [ب, ل, ك], [ال]]` → normalised slots; a flat list is one slot."""
    if not isinstance(spec, list):
        raise LexiconError(f"{source}: 'proclitics' must be a list of slots, e.g. [[و, ف], [ب, ل, ك], [ال]]")
    slots = spec if all(isinstance(x, list) for x in spec) else [spec]
    return tuple(tuple(normalise_for_matching(str(p)) for p in slot) for slot in slots)


def _claimed(used: list[bool], firings: list[Firing], current: Firing) -> set[int]:
    """Token positions inside other cues or contrast markers: their negators belong to them (لم يستجب، غير أن)."""
    return {i for i, u in enumerate(used) if u and not (current.start <= i < current.end)}


def _pattern(phrase) -> tuple[str, ...]:
    """Lexicon phrase → normalised token pattern; a trailing `*` on a word survives normalisation."""
    words = str(phrase).split()
    out = []
    for w in words:
        star = w.endswith("*")
        core = normalise_for_matching(w.rstrip("*"))
        out.extend(t for t in TOKEN.findall(core))
        if star and out:
            out[-1] = out[-1] + "*"
    return tuple(out)


def load_lexicon(path: Path | str) -> Lexicon:
    return Lexicon.from_file(path)


def rule_ids(fired: str) -> Sequence[str]:
    return [x for x in str(fired).split(";") if x]
