import re
from html.parser import HTMLParser

import pandas as pd
import pytest

from pipeline.prediction.analytics import by_outlet, timeline
from pipeline.prediction.report import render_html, write_html_report

VOID = {"meta", "br", "img", "hr", "link", "input", "source", "col", "wbr", "area", "base", "embed", "param",
        "track"}
# SVG elements that appear self-closed (<line/>) are reported by html.parser as startendtag: not pushed.


class Tree(HTMLParser):
    """Records every element with its ancestors, and every text chunk with the stack it sits in."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict]] = []
        self.elements: list[tuple[str, dict, tuple]] = []
        self.texts: list[tuple[str, tuple]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, attrs, tuple(self.stack)))
        if tag not in VOID:
            self.stack.append((tag, attrs))

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs), tuple(self.stack)))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        if data.strip():
            self.texts.append((data, tuple(self.stack)))

    def by_class(self, cls):
        return [(t, a, anc) for t, a, anc in self.elements if cls in (a.get("class") or "").split()]


def parse(text):
    tree = Tree()
    tree.feed(text)
    tree.close()
    return tree


def _frames():
    rows = [
        ("a1", 0, "قال الوزير إن المحادثات تتقدم.", "positive", 0.05, 0.15, 0.80, "2022-01-27", "وكالة أ", ["progress"]),
        ("a1", 1, "لم يتفق الطرفان على الضمانات.", "negative", 0.70, 0.20, 0.10, "2022-01-27", "وكالة أ", ["negation", "neg.x", "neg.x"]),
        ("a2", 0, "عقد الاجتماع في جنيف <script>alert(1)</script> & co.", "neutral", 0.25, 0.50, 0.25,
         "28/01/2022", "صحيفة ب", []),
        ("a2", 1, "أعلنت موسكو رفضها للرد الأمريكي.", "negative", 0.60, 0.30, 0.10, "28/01/2022", "صحيفة ب", None),
        ("a3", 0, "رحب الجانبان بالتقدم الذي تحقق.", "positive", 0.10, 0.20, 0.70, "2022-01-28", "وكالة أ",
         ["progress"]),
    ]
    s = pd.DataFrame(rows, columns=["article_id", "idx", "text", "label", "p_negative", "p_neutral", "p_positive",
                                    "date", "outlet", "rules_fired"])
    s["sentence_id"] = s["article_id"] + ":" + s["idx"].astype(str)
    s["truncated"] = False
    s["top_words"] = [[("تتقدم", 0.41)], [("لم", 0.52), ("الضمانات", 0.05)], [], [("رفضها", 0.3)], []]
    net = (s["p_positive"] - s["p_negative"]).groupby(s["article_id"]).mean()
    # articles deliberately in a different order from the sentences: the report follows the summary's order
    a = pd.DataFrame({"article_id": ["a3", "a1", "a2"]})
    a["sentences"] = a["article_id"].map(s["article_id"].value_counts())
    a["net_stance"] = a["article_id"].map(net)
    a["dominant_label"] = ["positive", "positive", "negative"]
    a["title"] = ["عنوان <b>ثالث</b>", "عنوان أول", "عنوان ثان"]
    return s, a


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    s, a = _frames()
    path = tmp_path_factory.mktemp("r") / "out" / "report.html"
    written = write_html_report(path, s, a, timeline(s, n_boot=200), by_outlet(s, n_boot=200),
                                title="تقرير تجريبي", model_description="tfidf runs:/abc/model T=1.50", top_n=2)
    assert written == path
    return s, a, path.read_text(encoding="utf-8")


def test_root_is_arabic_rtl_and_self_contained(report):
    _, _, text = report
    tree = parse(text)
    tag, attrs, ancestors = tree.elements[0]
    assert (tag, attrs.get("lang"), attrs.get("dir"), ancestors) == ("html", "ar", "rtl", ())
    assert text.startswith("<!DOCTYPE html>")
    lowered = text.lower()
    for forbidden in ("<script", "<link", "http://", "https://", "@font-face", "@import", "url("):
        assert forbidden not in lowered, forbidden
    for tag, attrs, _ in tree.elements:
        assert "src" not in attrs and not (attrs.get("href") or "").strip(), (tag, attrs)
    style = [t for t, anc in tree.texts if anc and anc[-1][0] == "style"][0]
    assert '"Noto Naskh Arabic"' in style and "sans-serif" in style


def test_sections_exist(report):
    _, _, text = report
    tree = parse(text)
    ids = {a.get("id") for _, a, _ in tree.elements}
    assert {"summary", "timeline", "outlets", "extremes", "articles"} <= ids
    assert len(tree.by_class("article")) == 3
    svg = [(a, anc) for t, a, anc in tree.elements if t == "svg"]
    # one chart drawn twice: CSS shows the wide one on a desktop, the narrow one on a phone
    assert sorted(a["class"] for a, _ in svg) == ["chart narrow", "chart wide"]
    assert all(any(t == "section" and a.get("id") == "timeline" for t, a in anc) for _, anc in svg)
    assert any(t == "polygon" or t == "line" for t, _, _ in tree.elements)  # interval band drawn
    assert "tfidf runs:/abc/model T=1.50" in text


def test_every_sentence_once_in_article_lists_in_order(report):
    s, a, text = report
    tree = parse(text)
    in_articles = [(attrs["data-sentence-id"], anc) for tag, attrs, anc in tree.by_class("s")
                   if any(t == "section" and "article" in (at.get("class") or "") for t, at in anc)]
    ids = [sid for sid, _ in in_articles]
    assert sorted(ids) == sorted(s["sentence_id"]) and len(ids) == len(set(ids))
    assert ids == ["a3:0", "a1:0", "a1:1", "a2:0", "a2:1"]  # articles in summary order, sentences by idx
    for sid, row in s.set_index("sentence_id").iterrows():
        # label as text and as class, not colour alone
        item = [(attrs, anc) for tag, attrs, anc in tree.by_class("s") if attrs["data-sentence-id"] == sid][0]
        assert f"s-{row['label']}" in item[0]["class"]


def test_extremes_rank_by_net(report):
    _, _, text = report
    tree = parse(text)

    def ids(cls):
        return [attrs["data-sentence-id"] for _, attrs, anc in tree.by_class("s")
                if any(cls in (at.get("class") or "") for _, at in anc)]

    assert ids("most-positive") == ["a1:0", "a3:0"]  # +0.75, +0.60 (top_n=2)
    assert ids("most-negative") == ["a1:1", "a2:1"]  # −0.60, −0.50


def test_escaping(report):
    _, _, text = report
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co." in text
    assert "عنوان &lt;b&gt;ثالث&lt;/b&gt;" in text
    tree = parse(text)
    assert not any(t in ("script", "b") for t, _, _ in tree.elements)


def test_numbers_sit_in_ltr_elements(report):
    _, _, text = report
    tree = parse(text)
    checked = 0
    for data, ancestors in tree.texts:
        tags = [t for t, _ in ancestors]
        classes = " ".join(a.get("class") or "" for _, a in ancestors).split()
        if "style" in tags or "title" in tags or "text" in classes:  # CSS, <title>, Arabic sentence text
            continue
        if re.search(r"\d", data):
            checked += 1
            # an HTML dir="ltr", a <bdi>, or an SVG drawn left to right (direction="ltr")
            assert any(a.get("dir") == "ltr" or a.get("direction") == "ltr" or t == "bdi"
                       for t, a in ancestors[1:]), (data, tags)
    assert checked > 30
    # probabilities shown with two decimals, in ltr spans
    assert '<span class="num" dir="ltr">0.80</span>' in text
    assert '<span class="num" dir="ltr">-0.25</span>' in text  # article a2's net stance, signed


def test_reasons_rendered_when_present_and_absent_columns_are_fine(report):
    s, a, text = report
    # without a lexicon the rule ids are shown, each once, with the direction their id says (neg. → سلبي)
    tree = parse(text)
    item = [a for t, a, _ in tree.by_class("s") if a.get("data-sentence-id") == "a1:1"][0]
    assert item["data-rules"] == "negation;neg.x;neg.x"  # the ids stay in the data
    shown = item_text(tree, "a1:1")
    assert shown.count("neg.x") == 1 and "سلبي" in shown and "negation" in shown and "×" not in shown
    assert "لم (+0.52)" in text and "الضمانات (+0.05)" in text
    bare = render_html(s.drop(columns=["rules_fired", "top_words", "date", "outlet"]), a.iloc[:0])
    tree = parse(bare)
    assert not tree.by_class("rules") and not tree.by_class("words")
    ids = {a.get("id") for _, a, _ in tree.elements}
    assert "timeline" not in ids and "outlets" not in ids and "articles" in ids
    assert len(tree.by_class("article")) == 3  # articles known only from the sentences still appear


def test_missing_columns_refused():
    s, a = _frames()
    from pipeline.core.errors import PipelineError

    with pytest.raises(PipelineError, match="p_positive"):
        render_html(s.drop(columns="p_positive"), a)



# ---------------------------------------------------------------- what the reader is told (issue 20)

from pipeline.prediction.report import ModelQuality  # noqa: E402
from pipeline.prediction.report_chart import NARROW, WIDE, nice_ticks, tick_label, timeline_svg  # noqa: E402


def item_text(tree, sentence_id, cls=None):
    """The text of one sentence's line in the articles section (optionally only inside elements of class `cls`)."""
    def inside(anc):
        return (any(a.get("data-sentence-id") == sentence_id for _, a in anc)
                and any(t == "section" and "article" in (a.get("class") or "") for t, a in anc)
                and (cls is None or any(cls in (a.get("class") or "").split() for _, a in anc)))
    return " ".join(d.strip() for d, anc in tree.texts if inside(anc))


def _texts_in(tree, cls):
    return " ".join(d for d, anc in tree.texts if any(cls in (a.get("class") or "").split() for _, a in anc))


def test_cues_shown_once_each_in_arabic_words_with_direction():
    from pipeline.labeling.rules import load_lexicon

    lexicon = load_lexicon("labels/lexicon.yaml")
    text = "روسيا ترفض العرض الأمريكي وترفض الضمانات ولم تحقق تقدما"
    s = pd.DataFrame({"article_id": ["a"], "idx": [0], "text": [text], "label": ["negative"],
                      "p_negative": [0.8], "p_neutral": [0.1], "p_positive": [0.1], "sentence_id": ["a:0"]})
    s["rules_fired"] = lexicon.label_texts([text])["rules_fired"]
    ids = s["rules_fired"].iloc[0].split(";")
    assert ids.count("neg.refusal") == 2 and "pos.progress:negated" in ids
    html_text = render_html(s, s.iloc[:0], cues=lexicon.cue_matches)
    tree = parse(html_text)
    shown = item_text(tree, "a:0", "rules")
    assert "neg." not in shown and "pos." not in shown  # Arabic words, not English ids
    assert re.findall(r"« (\S[^»]*?) »", shown) == ["ترفض", "وترفض", "تحقق تقدما"]  # each cue once, in order
    assert shown.count("سلبي") == 3 and "منفية" in shown  # the direction of each, the negated progress too
    item = [a for t, a, _ in tree.by_class("s")][0]
    assert item["data-rules"] == s["rules_fired"].iloc[0]


def test_low_confidence_sentences_are_marked():
    s, a = _frames()
    s["confident"] = [True, False, False, True, True]
    text = render_html(s, a, min_confidence=0.6)
    tree = parse(text)
    low = [a.get("data-sentence-id") for t, a, anc in tree.by_class("low")
           if any(t2 == "section" and "article" in (a2.get("class") or "") for t2, a2 in anc)]
    assert low == ["a1:1", "a2:0"]
    assert _texts_in(tree, "legend").count("ثقة منخفضة") == 1 and "0.60" in text
    assert "ثقة منخفضة" not in render_html(s.drop(columns="confident"), a)


def test_model_quality_and_smoke_warning():
    s, a = _frames()
    good = ModelQuality(smoke=False, test_macro_f1=0.812, test_ci=(0.701, 0.903), test_n=21, cv_macro_f1=0.78,
                        cv_ci=(0.66, 0.88), cv_n=74, run_id="abc")
    text = render_html(s, a, quality=good)
    tree = parse(text)
    quality = " ".join(d for d, anc in tree.texts if any(a.get("id") == "quality" for _, a in anc))
    for shown in ("0.81", "[0.70, 0.90]", "21", "0.78", "[0.66, 0.88]", "74", "macro-F1"):
        assert shown in quality, shown
    assert not tree.by_class("warn")
    smoke = render_html(s, a, quality=ModelQuality(smoke=True, test_macro_f1=0.24, test_ci=(0.1, 0.3), test_n=21))
    warn = [a for t, a, _ in parse(smoke).by_class("warn")]
    assert warn and warn[0].get("role") == "alert" and "نموذج تجريبي" in smoke
    unknown = render_html(s, a)
    assert "جودة النموذج غير معروفة" in unknown
    # a hybrid's rules were written on the gold that scores it: the page says its figures are in-sample
    assert not tree.by_class("in-sample")
    hybrid = parse(render_html(s, a, quality=ModelQuality(test_macro_f1=0.96, test_n=21, rules_in_sample=True)))
    assert hybrid.by_class("in-sample") and "داخل العينة" in " ".join(d for d, _ in hybrid.texts)


def test_article_headings_are_titles_or_first_words():
    s, a = _frames()
    tree = parse(render_html(s, a.drop(columns="title").iloc[:2].assign(title=["عنوان <b>ثالث</b>", ""])))
    h3 = [d for d, anc in tree.texts if anc and anc[-1][0] == "h3"
          and any("article" in (at.get("class") or "") for _, at in anc)]
    assert h3[0] == "عنوان <b>ثالث</b>"  # a3's title (escaped on the page, text here)
    assert h3[1] == "قال الوزير إن المحادثات تتقدم."  # a1 has an empty title: its first words
    assert h3[2].startswith("عقد الاجتماع في جنيف")  # a2 is not in the summary: first words too
    assert not any(re.fullmatch(r"a\d", h) for h in h3)


@pytest.mark.parametrize("values, limit, labels", [
    ([0.12, -0.03], 0.15, ["-0.15", "-0.10", "-0.05", "0", "+0.05", "+0.10", "+0.15"]),
    ([0.125], 0.15, None),
    ([0.6, -0.2], 0.6, ["-0.6", "-0.4", "-0.2", "0", "+0.2", "+0.4", "+0.6"]),
    ([0.95], 1.0, ["-1.00", "-0.75", "-0.50", "-0.25", "0", "+0.25", "+0.50", "+0.75", "+1.00"]),
    ([0.0], 0.05, ["-0.05", "0", "+0.05"]),
])
def test_chart_ticks_fall_on_round_steps(values, limit, labels):
    got_limit, ticks, decimals = nice_ticks(values)
    assert got_limit == pytest.approx(limit)
    shown = [tick_label(t, decimals) for t in ticks]
    if labels:
        assert shown == labels
    for t, label in zip(ticks, shown):
        assert float(label) == pytest.approx(t)  # the label says the tick's value, never +0.12 for 0.125


def test_chart_speaks_arabic_and_stays_legible_at_both_widths():
    s, _ = _frames()
    frame = timeline(s, n_boot=50)
    for layout, cls in ((WIDE, "wide"), (NARROW, "narrow")):
        svg = timeline_svg(frame, layout, css_class=cls)
        assert "صافي الموقف" in svg and "الجمل" in svg and "sentences" not in svg and "net stance" not in svg
        # text size in CSS px at the smallest width each drawing is shown at (700 px, a 330 px phone chart)
        shown_at = 700 - 24 if cls == "wide" else 330
        assert layout.font_px * shown_at / layout.width >= 9.5
    text = render_html(s, _frames()[1], timeline(s, n_boot=50))
    caption = [d for d, anc in parse(text).texts if anc and anc[-1][0] == "figcaption"]
    assert caption and "صافي الموقف" in caption[0]
