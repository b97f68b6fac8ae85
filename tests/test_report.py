import re
from html.parser import HTMLParser

import pandas as pd
import pytest

from pipeline.analytics import by_outlet, timeline
from pipeline.report import render_html, write_html_report

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
    assert len(svg) == 1 and any(t == "section" and a.get("id") == "timeline" for t, a in svg[0][1])
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
            assert any(a.get("dir") == "ltr" or t == "bdi" for t, a in ancestors[1:]), (data, tags)
    assert checked > 30
    # probabilities shown with two decimals, in ltr spans
    assert '<span class="num" dir="ltr">0.80</span>' in text
    assert '<span class="num" dir="ltr">-0.25</span>' in text  # article a2's net stance, signed


def test_reasons_rendered_when_present_and_absent_columns_are_fine(report):
    s, a, text = report
    assert "negation، neg.x ×2" in text and "لم (+0.52)" in text and "الضمانات (+0.05)" in text
    bare = render_html(s.drop(columns=["rules_fired", "top_words", "date", "outlet"]), a.iloc[:0])
    tree = parse(bare)
    assert not tree.by_class("rules") and not tree.by_class("words")
    ids = {a.get("id") for _, a, _ in tree.elements}
    assert "timeline" not in ids and "outlets" not in ids and "articles" in ids
    assert len(tree.by_class("article")) == 3  # articles known only from the sentences still appear


def test_missing_columns_refused():
    s, a = _frames()
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match="p_positive"):
        render_html(s.drop(columns="p_positive"), a)
