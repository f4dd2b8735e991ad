"""Wikipedia in other languages: namespace names from the dump's siteinfo, localised appendices,
caption markup and galleries, for XML dumps and parquet exports.

The dumps are written here in the real `pages-articles` format (export-0.11, siteinfo with the
wiki's own namespace names); the wikitext is written for these tests and is in the public domain.
"""

from __future__ import annotations

import bz2

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jamdata.text.clean import CleanOptions, clean_records, clean_wikitext
from jamdata.text.readers import is_reject, read_file
from jamdata.text.wikisite import language_table, parse_siteinfo, read_siteinfo, site_for

NAMESPACES = {
    "de": {
        -2: "Medium",
        -1: "Spezial",
        1: "Diskussion",
        2: "Benutzer",
        4: "Wikipedia",
        6: "Datei",
        8: "MediaWiki",
        10: "Vorlage",
        12: "Hilfe",
        14: "Kategorie",
        100: "Portal",
    },
    "ru": {
        -2: "Медиа",
        -1: "Служебная",
        1: "Обсуждение",
        2: "Участник",
        4: "Википедия",
        6: "Файл",
        8: "MediaWiki",
        10: "Шаблон",
        12: "Справка",
        14: "Категория",
        100: "Портал",
    },
}

DE_TEXT = """{{Infobox Fluss
| NAME = Lauter
| BILD = Lauter bei Hof.jpg
}}
Die '''Lauter''' ist ein kleiner [[Fluss]] im Süden von [[Deutschland|Deutschland]]. Sie entspringt am Rand
eines [[Mittelgebirge]]s und mündet nach etwa vierzig Kilometern in einen größeren Strom.<ref>Amt für Gewässer, 2001.</ref>

[[Datei:Lauter Quelle.jpg|mini|links|Die Quelle der Lauter mit einem [[Brunnen]] aus Sandstein]]
[[Bild:Lauter Mühle.png|miniatur|hochkant=1.2|Eine alte Mühle am Ufer]]

== Verlauf ==
Der Fluss fließt zuerst durch Wiesen und Wälder, dann an mehreren Dörfern vorbei. In seinem Tal
liegen alte Mühlen, von denen einige heute als Wohnhäuser dienen.

<gallery>
Datei:Lauter Brücke.jpg|Steinbrücke über die Lauter
Datei:Lauter Winter.jpg|mini|Die Lauter im Winter
</gallery>

== Geschichte ==
Schon im Mittelalter wurde das Wasser der Lauter für Mühlen genutzt. Später kamen Sägewerke hinzu.

== Siehe auch ==
* [[Liste von Flüssen in Deutschland]]

== Literatur ==
* Hans Beispiel: ''Flüsse der Heimat.'' Verlag, Stadt 1990.

== Weblinks ==
* [https://example.org/lauter Informationen zur Lauter]

== Einzelnachweise ==
<references />

[[Kategorie:Fluss in Deutschland]]
[[Kategorie:Gewässer im Beispielkreis]]
[[en:Lauter (river)]]"""

RU_TEXT = """{{Карточка реки
| Название = Светлая
}}
'''Светлая''' — небольшая [[река]] на севере [[Россия|России]]. Она начинается в болотах и впадает
в крупное озеро, пройдя около шестидесяти километров через леса.<ref>Справочник рек, 1985.</ref>

[[Файл:Светлая весной.jpg|мини|справа|Река весной у старой [[деревня|деревни]]]]
[[Изображение:Светлая мост.png|thumb|Деревянный мост]]

== География ==
Река течёт по равнине, образуя множество излучин. Берега покрыты лесом, местами встречаются луга.

<gallery>
Файл:Светлая зимой.jpg|Река зимой
</gallery>

== История ==
В прошлом по реке сплавляли лес, а на её берегах стояли небольшие мельницы.

== См. также ==
* [[Список рек России]]

== Примечания ==
{{примечания}}

== Литература ==
* Иванов И. И. Реки севера. — М., 1970.

== Ссылки ==
* [https://example.org/svetlaya Сведения о реке]

[[Категория:Реки по алфавиту]]
[[Категория:Бассейн озера Примерного]]"""

TEXTS = {"de": DE_TEXT, "ru": RU_TEXT}
TITLES = {"de": "Lauter (Fluss)", "ru": "Светлая (река)"}


def dump_xml(lang: str) -> bytes:
    """A `pages-articles` dump of one wiki: siteinfo with its namespaces, the article, a category
    page and a redirect."""
    ns = "\n".join(
        f'      <namespace key="{k}" case="first-letter">{v}</namespace>' for k, v in sorted(NAMESPACES[lang].items())
    )
    from xml.sax.saxutils import escape

    def page(pid: int, title: str, nsk: int, text: str, redirect: str | None = None) -> str:
        red = f'\n    <redirect title="{escape(redirect)}" />' if redirect else ""
        return (
            f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{nsk}</ns>\n    <id>{pid}</id>{red}\n"
            f"    <revision>\n      <id>{pid * 10}</id>\n      <timestamp>2024-05-01T00:00:00Z</timestamp>\n"
            f"      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
            f'      <text bytes="{len(text.encode())}" xml:space="preserve">{escape(text)}</text>\n'
            f"    </revision>\n  </page>\n"
        )

    cat = NAMESPACES[lang][14]
    return (
        f'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" xml:lang="{lang}">\n'
        f"  <siteinfo>\n    <sitename>Wikipedia</sitename>\n    <dbname>{lang}wiki</dbname>\n"
        f"    <base>https://{lang}.wikipedia.org/wiki/Main</base>\n    <generator>MediaWiki 1.43</generator>\n"
        f'    <case>first-letter</case>\n    <namespaces>\n      <namespace key="0" case="first-letter" />\n'
        f"{ns}\n    </namespaces>\n  </siteinfo>\n"
        + page(1, TITLES[lang], 0, TEXTS[lang])
        + page(2, f"{cat}:Beispiel", 14, "Eine Kategorie.")
        + page(3, "Umleitung", 0, "#REDIRECT [[X]]", redirect="X")
        + "</mediawiki>\n"
    ).encode("utf-8")


@pytest.fixture(params=["de", "ru"])
def dump(request, tmp_path):
    path = tmp_path / f"{request.param}wiki-20240501-pages-articles.xml.bz2"
    path.write_bytes(bz2.compress(dump_xml(request.param)))
    return request.param, str(path)


LEFTOVERS = {
    "de": [
        "Kategorie",
        "Datei",
        "Bild:",
        "mini|",
        "miniatur",
        "hochkant",
        "Siehe auch",
        "Literatur",
        "Weblinks",
        "Einzelnachweise",
        "Flüsse der Heimat",
        "Informationen zur Lauter",
        "Steinbrücke",
        "Quelle der Lauter",
        "Liste von Flüssen",
        "[[",
        "]]",
        "|",
        "{{",
        "<ref",
    ],
    "ru": [
        "Категория",
        "Файл",
        "Изображение",
        "мини|",
        "thumb",
        "См. также",
        "Примечания",
        "Литература",
        "Ссылки",
        "Реки севера",
        "Сведения о реке",
        "Река зимой",
        "Деревянный мост",
        "Список рек",
        "[[",
        "|",
        "{{",
    ],
}
KEPT = {
    "de": [
        "Die Lauter ist ein kleiner Fluss im Süden von Deutschland.",
        "\nVerlauf\n",
        "\nGeschichte\n",
        "Später kamen Sägewerke hinzu.",
    ],
    "ru": ["Светлая — небольшая река на севере России.", "\nГеография\n", "\nИстория\n", "стояли небольшие мельницы."],
}


def test_siteinfo_gives_language_and_namespace_names(dump):
    lang, path = dump
    site = read_siteinfo(path)
    assert site.lang == lang
    assert (
        {"datei", "bild", "kategorie", "medium"} <= site.link_namespaces
        if lang == "de"
        else {"файл", "изображение", "категория", "медиа"} <= site.link_namespaces
    )
    assert {"file", "image", "category", "media"} <= site.link_namespaces  # canonical names work everywhere


def test_siteinfo_names_not_in_the_table_are_used():
    head = (
        b'<siteinfo><dbname>xxwiki</dbname><namespaces><namespace key="6" case="first-letter">'
        b'Fajlo</namespace><namespace key="14">Kategorio</namespace><namespace key="10">Shablono'
        b"</namespace></namespaces></siteinfo>"
    )
    site = parse_siteinfo(head)
    assert {"fajlo", "kategorio"} <= site.link_namespaces and "shablono" not in site.link_namespaces
    assert clean_wikitext("Teksto [[Fajlo:a.jpg|thumb|bildo]] plu.\n[[Kategorio:B]]", site=site) == "Teksto plu."


@pytest.mark.parametrize("via", ["pipeline", "no_site"])
def test_dump_cleans_without_links_captions_or_appendices(dump, via):
    lang, path = dump
    recs = list(read_file(path, "wiki_xml", "wikipedia"))
    site = read_siteinfo(path) if via == "pipeline" else None  # without it: the page URL's language
    out = [r for r in clean_records(recs, "wiki_xml", CleanOptions(), site) if not is_reject(r)]
    (doc,) = out
    text = doc["text"]
    for bad in LEFTOVERS[lang]:
        assert bad not in text, (bad, text)
    for good in KEPT[lang]:
        assert good in text, (good, text)


def test_configured_drop_sections_are_honoured(dump):
    lang, path = dump
    recs = [r for r in read_file(path, "wiki_xml", "wikipedia") if not is_reject(r)]
    heading = {"de": "Geschichte", "ru": "История"}[lang]
    (doc,) = clean_records(recs, "wiki_xml", CleanOptions(wiki_drop_sections=(heading,)))
    assert f"\n{heading}\n" not in doc["text"] and KEPT[lang][0] in doc["text"]
    (doc,) = clean_records(recs, "wiki_xml", CleanOptions(wiki_drop_sections=()))  # [] turns dropping off
    appendix = {"de": "Weblinks", "ru": "Ссылки"}[lang]
    assert f"\n{appendix}\n" in doc["text"]


def test_english_caption_markup_and_gallery_lines():
    src = (
        "Text before.\n<gallery mode=packed>\nFile:A.jpg|thumb|A caption\n</gallery>\n"
        "[[Image:B.png|thumb|upright=1.3|right|Caption with [[link]]]] Text after."
    )
    assert clean_wikitext(src) == "Text before.\n\nText after."


def test_every_reference_language_has_a_table_entry():
    from jamdata.text.filters import WIKIPEDIA_LANGUAGES

    table = language_table()
    for lang in WIKIPEDIA_LANGUAGES:
        entry = table[lang]
        assert entry["namespaces"] and entry["drop_sections"] and entry["image_options"], lang
        site = site_for(lang)
        assert len(site.link_namespaces) >= 4 and site.drop_sections, lang


@pytest.mark.parametrize("markup", [True, False])
def test_parquet_export_in_german(tmp_path, markup):
    if markup:
        text = DE_TEXT
    else:  # a plain-text export that kept caption and category residue and the appendices
        text = (
            "Die Lauter ist ein kleiner Fluss im Süden von Deutschland. Sie entspringt am Rand eines "
            "Mittelgebirges.\nmini|links|Die Quelle der Lauter\nDatei:Lauter Winter.jpg|Die Lauter im Winter\n"
            "Verlauf\nDer Fluss fließt zuerst durch Wiesen und Wälder.\nSiehe auch\nListe von Flüssen\n"
            "Weblinks\nInformationen zur Lauter\nKategorie:Fluss in Deutschland"
        )
    path = tmp_path / "de.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["7"],
                "url": ["https://de.wikipedia.org/wiki/Lauter_(Fluss)"],
                "title": ["Lauter (Fluss)"],
                "text": [text],
            }
        ),
        path,
    )
    (doc,) = clean_records(list(read_file(str(path), "wiki_parquet", "wikipedia")), "wiki_parquet")
    for bad in ("Kategorie", "Datei", "mini|", "Siehe auch", "Weblinks", "Liste von Flüssen", "Quelle der Lauter"):
        assert bad not in doc["text"], (bad, doc["text"])
    assert doc["text"].startswith("Die Lauter ist ein kleiner Fluss im Süden von Deutschland.")
    assert doc["metadata"]["title"] == "Lauter (Fluss)"
