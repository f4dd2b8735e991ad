"""Write the bundled text sample (sample_data/text/) in the real raw formats, deterministically.

    python sample_data/make_text.py [OUT_DIR]

All prose is original. Planted for the demo: boilerplate lines shared by several Common Crawl pages
(removed by line dedup), a near-duplicate and an exact duplicate in C4, a near-copy of the
Gutenberg book in the Pile file (book-level overlap), a redirect and a talk page in the Wikipedia
dump, a non-HTML response and a page whose HTTP charset lies in the WARC, and a non-Books3 line in
the Pile file.
"""
from __future__ import annotations

import bz2
import gzip
import io
import json
import sys
import tarfile
from pathlib import Path

OUT = Path(__file__).resolve().parent / "text"
DATE = "2024-05-18T01:58:10Z"

# -- prose -----------------------------------------------------------------------------------------
P = {
    "garden": [
        "Our community garden started four years ago on an empty lot behind the old post office. At first there were only six raised beds, a borrowed hose and a handful of neighbours who were not sure anything would grow in such compacted soil.",
        "The first season taught us patience. We spread wood chips over the paths, added compost to every bed and planted beans, squash and marigolds because they forgive mistakes. By August the beans had climbed the fence and the children on our street were picking them straight from the vine.",
        "This year we have thirty beds, a tool shed built from salvaged doors and a waiting list of families who want a plot. If you would like to help, come by on a Saturday morning. Nobody needs experience, only a pair of gloves and a willingness to get a little muddy.",
    ],
    "bicycle": [
        "A squeaking chain is the most common complaint we hear in the repair shop, and it is usually the easiest one to fix. Most of the time the chain is simply dry or coated in old grime that grinds against the cassette with every pedal stroke.",
        "Start by shifting to the smallest rear cog and wiping the chain with a rag while you turn the pedals backwards. If the rag comes away black after several passes, use a mild degreaser and a stiff brush, then let the chain dry completely before you add fresh lubricant.",
        "Apply one small drop of oil to each roller rather than soaking the whole chain. Wait a few minutes, then wipe off the excess, because oil on the outside of the chain only attracts dirt. A clean, lightly oiled chain runs quietly and will last thousands of kilometres longer.",
    ],
    "library": [
        "The town library opened in 1911 in a narrow brick building with a façade of carved limestone. Its first librarian kept a handwritten ledger of every book lent, and the ledger still sits in a glass case beside the front desk.",
        "During the nineteen fifties the library added a reading room for children, and a small café later took over the old coal cellar. Visitors who expect a naïve provincial collection are often surprised by the maps, letters and photographs kept in the local history archive.",
        "Volunteers are now scanning the archive so that anyone can browse it from home. The project is slow, careful work, but each week another box of fragile documents becomes available to researchers, students and families tracing their own history.",
    ],
    "bread": [
        "Baking bread at home is less about precise recipes than about learning to read the dough. Flour absorbs water differently from one bag to the next, and a warm kitchen will make the same dough rise twice as fast as a cold one.",
        "Begin with a simple loaf of flour, water, salt and yeast. Knead until the dough feels smooth and springs back slowly when pressed, then let it rise until it has roughly doubled. The crust will brown best in a very hot oven with a tray of water on the lowest shelf.",
        "Once the basic loaf feels familiar, try small changes one at a time: a little whole wheat flour, a longer cold rise in the refrigerator, or a handful of seeds. Keep notes, because the best improvements are often the ones you would otherwise forget.",
    ],
    "rain": [
        "Collecting rainwater is one of the simplest ways to reduce the amount of treated water a household uses in the garden. A single roof can gather a surprising volume during an ordinary spring storm, far more than most people expect.",
        "The basic system needs only a gutter, a downpipe diverter and a covered barrel. The cover matters, because open water attracts mosquitoes and collects leaves that soon turn the barrel into a smelly soup. A fine mesh screen keeps both problems away.",
        "Use the stored water for flower beds, vegetables and washing tools rather than for drinking. In dry summers a pair of barrels can carry a small garden through several weeks without a single turn of the outdoor tap.",
    ],
    "tides": [
        "Tide pools are small worlds that appear and vanish twice a day. When the sea pulls back, the rocks reveal anemones, limpets, hermit crabs and tiny fish that have learned to survive in water that grows warmer and saltier by the hour.",
        "The best time to explore is an hour before the lowest tide, when the pools are largest and the returning water is still far away. Wear shoes with a good grip, because wet rocks covered in seaweed are far more slippery than they look.",
        "Look closely but leave everything where you find it. Turning a stone over can expose the creatures beneath it to the sun, so always put it back exactly as it was. A patient observer will see more by sitting still for ten minutes than by searching every pool.",
    ],
    "chess": [
        "Many adults decide to learn chess after watching a tournament online, and many of them give up after a few painful losses. The game feels enormous at first, but a handful of habits will make a beginner competitive surprisingly quickly.",
        "Before every move, ask what your opponent threatens and whether any of your pieces are undefended. Most games between beginners are decided by a piece left hanging, not by deep strategy, so this single question prevents a large share of defeats.",
        "After each game, replay it slowly and find the moment where the balance changed. Writing down one lesson per game builds a personal collection of mistakes you will rarely make twice, and it turns every loss into a small step forward.",
    ],
    "stars": [
        "You do not need a telescope to enjoy the night sky. On a clear evening away from street lights, the naked eye can pick out several planets, the pale band of the Milky Way and satellites crossing the sky in slow, steady lines.",
        "Give your eyes at least twenty minutes to adjust to the dark, and use a red torch if you need to read a star chart. White light resets your night vision almost instantly, and it takes a long time to recover.",
        "A pair of ordinary binoculars is the best first instrument. Held steady against a fence or a car roof, they reveal craters on the Moon, the four bright moons of Jupiter and star clusters that look like scattered sugar on black velvet.",
    ],
    "compost": [
        "Compost turns kitchen scraps and fallen leaves into a dark, crumbly soil that plants love. The process is not complicated, but it works best when the pile has the right mix of materials, enough air and a little moisture.",
        "Balance green materials such as vegetable peelings and grass clippings with brown materials such as dry leaves, straw and shredded cardboard. Too much green makes the pile wet and sour, while too much brown makes it dry and very slow to break down.",
        "Turn the pile every week or two with a garden fork to let air into the centre. In warm weather a well managed heap can be ready in about three months, and the finished compost will smell like a forest floor after rain.",
    ],
    "plants": [
        "Most houseplants that die indoors are not killed by neglect but by kindness, usually in the form of too much water. Roots need air as well as moisture, and soil that stays soggy for days slowly suffocates them.",
        "Before watering, push a finger into the soil up to the second knuckle. If it still feels damp, wait a few more days. Pots with drainage holes are essential, because a decorative pot without them turns every watering into a small flood.",
        "Light matters just as much. A plant that grew in a bright greenhouse will struggle in a dim corner, so move it closer to a window for a few weeks and watch how the new leaves respond before you change anything else.",
    ],
    "trains": [
        "Travelling across the country by train takes longer than flying, but the journey becomes part of the trip rather than an interruption. Rivers, farms and small towns slide past the window, and there is time to read, write or simply watch.",
        "Book the long stretches early, because the cheapest seats sell out weeks in advance. Night trains are worth considering as well, since a sleeping compartment replaces a hotel room and you wake up in a new city with the whole day ahead.",
        "Pack light, bring your own food for the longer legs and keep a paper copy of your tickets in case a phone battery runs out. Delays happen, but they are easier to accept when the view outside the window is this good.",
    ],
}

BOILERPLATE = ["Home | About | Contact | Shop",
               "Sign up for our newsletter to get weekly updates from our editors.",
               "Copyright 2024 Riverside Media Group. All rights reserved."]


def text_of(key: str) -> str:
    return "\n\n".join(P[key])


# -- Common Crawl ------------------------------------------------------------------------------------
def html_page(title: str, paras: list[str]) -> str:
    body = "\n".join(f"<p>{p}</p>" for p in paras)
    return (f"<!DOCTYPE html>\n<html><head><title>{title}</title></head><body>\n"
            f"<nav><a href='/'>Home</a> <a href='/about'>About</a> <a href='/shop'>Shop</a></nav>\n"
            f"<article><h1>{title}</h1>\n{body}\n</article>\n"
            f"<footer>Copyright 2024 Riverside Media Group. All rights reserved.</footer>\n</body></html>\n")


def write_warc(path: Path) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    pages = [
        ("http://garden.example.org/blog/our-garden", "text/html; charset=utf-8", html_page("Our community garden", P["garden"]).encode("utf-8")),
        ("http://cycling.example.com/repair/chain", "text/html", html_page("Fixing a squeaking chain", P["bicycle"]).encode("utf-8")),
        # the HTTP header lies: the bytes are UTF-8
        ("http://library.example.net/history", "text/html; charset=iso-8859-1", html_page("Our library", P["library"]).encode("utf-8")),
        # no HTTP charset, a <meta> one, cp1252 bytes
        ("http://bakery.example.org/bread", "text/html",
         html_page("Baking bread at home", P["bread"]).replace("<head>", '<head><meta charset="windows-1252">')
         .replace("rise twice as fast", "rise twice as fast \u2013 even in a caf\u00e9 kitchen \u2013").encode("cp1252")),
        ("http://garden.example.org/images/beans.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(64)),
    ]
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    for i, (url, ctype, payload) in enumerate(pages):
        http = StatusAndHeaders("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(payload)))],
                                protocol="HTTP/1.1")
        rec = writer.create_warc_record(url, "response", payload=io.BytesIO(payload), http_headers=http,
                                        warc_headers_dict={"WARC-Record-ID": f"<urn:uuid:00000000-0000-4000-8000-{i:012d}>",
                                                           "WARC-Date": DATE})
        writer.write_record(rec)
    path.write_bytes(buf.getvalue())


def write_wet(path: Path) -> None:
    from warcio.warcwriter import WARCWriter

    docs = [("http://water.example.org/rain-barrels", [BOILERPLATE[0]] + P["rain"] + BOILERPLATE[1:]),
            ("http://coast.example.com/tide-pools", [BOILERPLATE[0]] + P["tides"] + BOILERPLATE[1:]),
            ("http://games.example.net/learn-chess", [BOILERPLATE[0]] + P["chess"] + BOILERPLATE[1:]),
            # a near-duplicate of the first page (one word changed), as mirrors produce
            ("http://mirror.example.org/rain-barrels", [BOILERPLATE[0]] + [P["rain"][0].replace("surprising", "remarkable")]
             + P["rain"][1:] + BOILERPLATE[1:])]
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    for i, (url, lines) in enumerate(docs):
        payload = "\n".join(lines).encode("utf-8")
        rec = writer.create_warc_record(url, "conversion", payload=io.BytesIO(payload), warc_content_type="text/plain",
                                        warc_headers_dict={"WARC-Record-ID": f"<urn:uuid:00000000-0000-4000-9000-{i:012d}>",
                                                           "WARC-Date": DATE, "WARC-Identified-Content-Language": "eng"})
        writer.write_record(rec)
    path.write_bytes(buf.getvalue())


# -- C4 -----------------------------------------------------------------------------------------------
def write_c4(path: Path) -> None:
    rows = [
        {"text": text_of("stars"), "url": "https://sky.example.org/naked-eye", "timestamp": "2019-04-21T18:54:04Z"},
        {"text": text_of("compost"), "url": "https://soil.example.com/compost-basics", "timestamp": "2019-04-22T10:12:44Z"},
        {"text": text_of("plants"), "url": "https://green.example.net/overwatering", "timestamp": "2019-04-23T08:01:19Z"},
        {"text": text_of("trains"), "url": "https://rail.example.org/cross-country", "timestamp": "2019-04-24T16:45:00Z"},
        # near-duplicate of the first (one word changed): MinHash drops it
        {"text": text_of("stars").replace("several planets", "a few planets"), "url": "https://copy.example.com/sky",
         "timestamp": "2019-04-25T11:30:00Z"},
        # exact duplicate of the second under another URL: exact dedup drops it
        {"text": text_of("compost"), "url": "https://scraper.example.biz/compost", "date": "2019-04-26"},
    ]
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    path.write_bytes(gzip.compress(data, mtime=0))


# -- Wikipedia ----------------------------------------------------------------------------------------
WIKI = {
    "Vellmar River": """{{Infobox river
| name = Vellmar River
| length = {{convert|212|km|mi}}
}}
The '''Vellmar River''' is a river in the northern lowlands of the fictional province of [[Ostrand]]. It rises in the [[Harrow Hills]] and flows east for about 212 kilometres before joining the [[Grey Sound|sea at Grey Sound]].<ref>{{cite book |title=Rivers of Ostrand |year=1998}}</ref>

[[File:Vellmar bend.jpg|thumb|A wide bend of the river near [[Tollen]]]]
== Course ==
The upper river is fast and narrow, cutting through a series of limestone gorges that were once quarried for building stone. Below the town of [[Tollen]] the valley widens, and the river slows into long meanders bordered by wet meadows and old willow trees.<ref name="survey">Regional survey, 2004.</ref>

In the lower valley the river was straightened in the nineteenth century to protect farmland from floods. Several of the cut-off meanders survive as quiet oxbow lakes that now shelter otters, herons and rare dragonflies.

== Economy ==
{| class="wikitable"
! Town !! Population
|-
| Tollen || 12,400
|}
For centuries the river carried timber and grain to the coast on flat-bottomed barges. Today it is used mainly for recreation, and a walking path follows the bank for most of its length, passing mills, lock houses and small villages with weekly markets.<!-- check the mill count -->

== See also ==
* [[Rivers of Ostrand]]

== References ==
{{reflist}}

[[Category:Rivers of Ostrand]]
[[de:Vellmar]]
""",
    "Orrin Lighthouse": """{{Short description|Lighthouse on a fictional island}}
'''Orrin Lighthouse''' is a stone lighthouse on the western cape of [[Orrin Island]]. It was completed in 1867 after a winter storm wrecked three cargo ships on the reef below the cape within a single week.<ref>Harbour board minutes, 1866.</ref>

== History ==
The tower was built from granite blocks carried by boat from the mainland, because the island had no suitable stone of its own. Its first keeper, ''Margaret Hale'', kept the lamp burning for thirty-one years and recorded the weather three times a day in a set of logbooks that are now held by the island museum.

The light was converted to electricity in 1952 and fully automated in 1989. The keepers' cottages were restored by volunteers and now house a small exhibition about the [[Shipwreck|shipwrecks]] of the reef and the families who lived at the station.

== Visiting ==
A footpath leads from the harbour to the cape in about an hour. The tower is open to visitors on summer weekends, and on clear days the view from the gallery reaches the distant hills of the mainland.

[[Category:Lighthouses]]
""",
    "Tessaly bread": """'''Tessaly bread''' is a flat, round loaf traditionally baked in the villages of the [[Tessaly Valley]] for harvest festivals.{{citation needed|date=May 2024}}

== Preparation ==
The dough is made from barley and wheat flour, water, salt and a sourdough starter that families keep alive for generations. After a long rise the loaves are pressed flat by hand, marked with a wooden stamp showing the family sign and baked directly on the floor of a wood-fired oven.

The stamp is an important part of the custom. Because several households share one village oven, the marks make it possible to return every loaf to the right family, and old stamps are often passed down as heirlooms.

== Serving ==
Tessaly bread is usually torn rather than cut and eaten with soft cheese, honey or the first pressing of olive oil. Slices of stale bread are soaked in broth for a winter soup that many people in the valley still cook at least once a week.
""",
}


def write_wiki(path: Path) -> None:
    from xml.sax.saxutils import escape

    pages = [(i + 10, 0, title, text, None) for i, title_text in enumerate(WIKI.items()) for title, text in [title_text]]
    pages.append((20, 0, "Vellmar", "#REDIRECT [[Vellmar River]]", "Vellmar River"))
    pages.append((21, 1, "Talk:Vellmar River", "Is the length figure from the 1998 survey or the newer one? ~~~~", None))
    out = ['<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">',
           "  <siteinfo>", "    <sitename>Wikipedia</sitename>", "    <dbname>enwiki</dbname>",
           "    <base>https://en.wikipedia.org/wiki/Main_Page</base>", "  </siteinfo>"]
    for pid, ns, title, text, redirect in pages:
        out += ["  <page>", f"    <title>{escape(title)}</title>", f"    <ns>{ns}</ns>", f"    <id>{pid}</id>"]
        if redirect:
            out.append(f'    <redirect title="{escape(redirect)}" />')
        out += ["    <revision>", f"      <id>{pid * 100}</id>", "      <timestamp>2024-05-01T00:00:00Z</timestamp>",
                "      <model>wikitext</model>", "      <format>text/x-wiki</format>",
                f'      <text bytes="{len(text.encode())}" xml:space="preserve">{escape(text)}</text>',
                "    </revision>", "  </page>"]
    out.append("</mediawiki>\n")
    path.write_bytes(bz2.compress("\n".join(out).encode("utf-8"), 9))


# -- books --------------------------------------------------------------------------------------------
BOOK = [
    "THE LIGHTHOUSE AT GULL POINT",
    "CHAPTER I",
    "The keeper's daughter was eleven years old when she first climbed the tower alone. Her father had gone to the mainland for oil and rope, and the boat was late, so she carried the lamp wicks up the spiral stair herself and trimmed them exactly as she had watched him do a hundred times.",
    "The wind rose at dusk. From the gallery she could see the grey shapes of fishing boats running for the harbour, their sails reefed and their bows throwing spray. She lit the lamp, wound the clockwork that turned the great lens, and sat with her back against the warm brass while the beam swept out across the water.",
    "When the boat finally scraped onto the shingle near midnight, her father found her asleep at the top of the stair with the logbook open on her knees. She had written the time, the wind and the state of the sea in careful capital letters, just as the rules required.",
    "CHAPTER II",
    "In the spring an inspector arrived from the harbour board with a leather case full of forms. He measured the oil, counted the spare glass, and asked the girl to recite the signals for fog. She answered every question, and he wrote something in his notebook that he did not show anyone.",
    "Years later she learned what he had written. It was a single line recommending that, should the post ever fall vacant, the board consider the keeper's daughter before any other candidate. She kept the light at Gull Point for forty years.",
]
GUTENBERG_HEADER = """The Project Gutenberg EBook of The Lighthouse at Gull Point, by A. N. Other

This eBook is for the use of anyone anywhere at no cost and with
almost no restrictions whatsoever.  You may copy it, give it away or
re-use it under the terms of the Project Gutenberg License included
with this eBook or online at www.gutenberg.org

Title: The Lighthouse at Gull Point
Author: A. N. Other
Release Date: May, 2024 [EBook #99999]
Language: English

*** START OF THIS PROJECT GUTENBERG EBOOK THE LIGHTHOUSE AT GULL POINT ***

Produced by the Sample Data Volunteers

"""
GUTENBERG_FOOTER = """

End of the Project Gutenberg EBook of The Lighthouse at Gull Point, by A. N. Other

*** END OF THIS PROJECT GUTENBERG EBOOK THE LIGHTHOUSE AT GULL POINT ***

***** This file should be named 99999.txt *****

Updated editions will replace the previous one--the old editions
will be renamed.

START: FULL LICENSE

THE FULL PROJECT GUTENBERG LICENSE
PLEASE READ THIS BEFORE YOU DISTRIBUTE OR USE THIS WORK

To protect the Project Gutenberg-tm mission of promoting the free
distribution of electronic works, by using or distributing this work
you agree to comply with all the terms of the Full Project Gutenberg-tm
License available with this file or online at www.gutenberg.org/license.
"""
FIELD_GUIDE = [
    "A Field Guide to Quiet Afternoons",
    "Chapter One: The Art of Doing Very Little",
    "There is a particular kind of afternoon that arrives without warning, usually in late autumn, when the light turns gold and the house falls silent. Most of us fill such afternoons with errands. This book is an argument for leaving a few of them empty.",
    "An empty afternoon is not wasted. The mind, released from lists and messages, begins to wander along paths it has not taken in years. Old memories surface, small problems solve themselves, and ideas that seemed impossible in the morning look merely difficult by tea time.",
    "Chapter Two: Where to Sit",
    "Choose a chair near a window but not facing a screen. A view of trees is ideal, though a street with passing bicycles will do. Keep a notebook nearby, not to work, but to catch the occasional thought that deserves to be kept.",
    "If the weather allows, go outside. A bench in a park, the steps of a library or the edge of a quiet harbour all serve the purpose well. The only rule is that nothing needs to be achieved before the light fades.",
]


def write_books(gut_dir: Path, pile_path: Path) -> None:
    import zstandard

    gut_dir.mkdir(parents=True, exist_ok=True)
    body = "\n\n".join(BOOK)
    (gut_dir / "lighthouse_pg99999.txt").write_bytes(
        ("\ufeff" + GUTENBERG_HEADER + body + GUTENBERG_FOOTER).replace("\n", "\r\n").encode("utf-8"))
    near_copy = body.replace("forty years", "almost forty years")
    lines = [{"text": "\n\n".join(FIELD_GUIDE), "meta": {"pile_set_name": "Books3"}},
             {"text": "This line belongs to another Pile subset and is not a book.", "meta": {"pile_set_name": "Pile-CC"}},
             {"text": near_copy, "meta": {"pile_set_name": "Books3"}}]
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines).encode("utf-8")
    pile_path.write_bytes(zstandard.ZstdCompressor(level=10).compress(data))


# -- arXiv --------------------------------------------------------------------------------------------
MAIN_TEX = r"""%% Submission source; compile with pdflatex.
\documentclass[11pt]{article}
\usepackage{amsmath}
\newcommand{\sys}{\textsc{Tidewater}}
\newcommand{\norm}[1]{\lVert #1 \rVert}
\newcommand\jacc[2]{J(#1, #2)}
\def\eps{\varepsilon}
\title{\sys: Streaming Near-Duplicate Removal for Text Corpora}
\author{A. Researcher \and B. Scientist}
\begin{document}
\maketitle
\begin{abstract}
We describe \sys, a streaming method for removing near-duplicate documents from very large text collections.
\end{abstract}
% TODO: shorten the introduction before submission
\input{sections/intro}
\section{Method}
\sys{} represents each document by the set of its word five-grams and estimates the similarity $\jacc{A}{B}$ of two documents from compact signatures. % signatures are 128 values
Two documents are compared only when their signatures agree on at least one band, which keeps the number of comparisons close to linear in the size of the collection.
The estimation error is bounded by $\eps$ with high probability, and we normalise signature vectors so that $\norm{s} = 1$ before clustering.

\section{Results}
On a collection of web pages, \sys{} removed most of the mirrored copies while keeping pages that merely shared a common template. Processing time grew almost linearly with the number of documents, and memory stayed flat because no step needs to hold the whole collection at once.

\begin{thebibliography}{9}
\bibitem{broder} A. Broder. On the resemblance and containment of documents. 1997.
\bibitem{lee} K. Lee et al. Deduplicating training data makes language models better. 2022.
\end{thebibliography}
\end{document}
"""
INTRO_TEX = r"""\section{Introduction}
% an internal note that must not reach the corpus
Large text corpora collected from the web contain many copies of the same page: mirrors, reposts and templates filled with slightly different words.
Training on such copies wastes computation and encourages a model to memorise instead of generalising, as earlier work has shown~\cite{lee}.
In this paper we present \sys, which finds these copies in a single pass over the data with a fixed amount of memory per worker.
"""


def write_arxiv(path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content in (("main.tex", MAIN_TEX), ("sections/intro.tex", INTRO_TEX),
                              ("main.bbl", "\\begin{thebibliography}{9}\\end{thebibliography}\n")):
            data = content.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue(), mtime=0))


def main(out: Path = OUT) -> None:
    for sub in ("commoncrawl", "c4", "wikipedia", "books/gutenberg", "arxiv"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    write_warc(out / "commoncrawl" / "sample.warc.gz")
    write_wet(out / "commoncrawl" / "sample.warc.wet.gz")
    write_c4(out / "c4" / "c4-sample.json.gz")
    write_wiki(out / "wikipedia" / "enwiki-sample-pages-articles.xml.bz2")
    write_books(out / "books" / "gutenberg", out / "books" / "books3-sample.jsonl.zst")
    write_arxiv(out / "arxiv" / "2405.00001.tar.gz")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
