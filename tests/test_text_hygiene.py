"""Data hygiene and scripts without spaces: the C4 bad-words list shipped offline, 13-gram
decontamination, PII masking, character counts for CJK, language id of LaTeX without its math."""

from __future__ import annotations

import gzip
import json

import pytest

from jamdata.config import Config, ConfigError
from jamdata.text.filters import apply_chain, build_filter_chain
from jamdata.text.filters.basic import MinLengthFilter
from jamdata.text.filters.c4 import C4Filter, load_bad_words
from jamdata.text.filters.hygiene import DecontaminationFilter, PIIFilter
from jamdata.text.langid import LanguageFilter


@pytest.fixture(scope="module")
def web_texts(corpus):
    with gzip.open(corpus / "c4/CC-MAIN-2019-30-docs.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def test_ldnoobw_list_ships_and_c4_drops_on_it():
    words = load_bad_words("ldnoobw")
    assert len(words) > 350 and "2 girls 1 cup" in words and all(not w.startswith("#") for w in words)
    f = C4Filter(bad_words="ldnoobw")
    page = "This is a fine sentence about gardens. " * 2 + "It also says bollocks here, sadly.\nThe end is near now."
    v = f(page)
    assert not v.keep and "bollocks" in v.reason
    assert C4Filter(bad_words="ldnoobw")(
        "A fine sentence about gardens here.\nAnother one that is fine.\nAnd a third one too, see."
    ).keep


EVAL_PASSAGE = (
    "The quick brown fox of the northern valley jumped over seventeen lazy dogs while the farmer "
    "counted sheep beside the old stone mill near the river"
)


def test_planted_evaluation_passage_is_removed_and_nothing_else(tmp_path, web_texts):
    evals = tmp_path / "eval.jsonl"
    evals.write_text(
        json.dumps({"question": EVAL_PASSAGE, "answer": "the fox"})
        + "\n"
        + json.dumps({"question": "Too short to match anything.", "answer": "no"})
        + "\n"
    )
    f = DecontaminationFilter(eval_sets=[str(evals)])
    planted = web_texts[5][:300] + "\n" + EVAL_PASSAGE.upper().replace(" THE ", "  the ") + ".\n" + web_texts[5][300:]
    docs = web_texts[:200] + [planted]
    verdicts = [f(t) for t in docs]
    dropped = [i for i, v in enumerate(verdicts) if not v.keep]
    assert dropped == [200]
    assert "evaluation set eval.jsonl" in verdicts[200].reason and verdicts[200].fields["contaminated_ngrams"] >= 1
    # 12 words in a row are not enough
    assert f(" ".join(EVAL_PASSAGE.split()[:12]) + " and then something else entirely.").keep


def test_decontamination_in_a_chain_writes_a_reject_reason(tmp_path):
    evals = tmp_path / "passages.txt"
    evals.write_text(EVAL_PASSAGE + "\n")
    chain = build_filter_chain(
        Config(
            {"chains": {"c4": ["decontaminate"]}, "decontaminate": {"eval_sets": [str(evals)]}}, "text.clean.filters"
        ),
        "c4",
    )
    verdict, failed = apply_chain("Intro. " + EVAL_PASSAGE + " Outro.", chain)
    assert failed == "decontaminate" and not verdict.keep
    with pytest.raises(ConfigError, match="decontaminate.*cannot read"):
        build_filter_chain(
            Config(
                {"chains": {"c4": ["decontaminate"]}, "decontaminate": {"eval_sets": [str(tmp_path / "missing.txt")]}},
                "text.clean.filters",
            ),
            "c4",
        )


def test_pii_masks_emails_and_ips_and_counts_them():
    text = (
        "Write to jane.doe+news@example.co.uk or admin@mail.example.org. The server 192.168.0.17 and "
        "2001:db8::8a2e:370:7334 answered; version 1.2.3 and 10:30:00 and 999.1.1.1 are no addresses."
    )
    v = PIIFilter()(text)
    assert v.keep and v.fields == {"pii_emails": 2, "pii_ips": 2}
    assert "@" not in v.text and "192.168" not in v.text and "2001:db8" not in v.text
    assert "<EMAIL_ADDRESS>" in v.text and "<IP_ADDRESS>" in v.text
    assert "version 1.2.3 and 10:30:00 and 999.1.1.1" in v.text
    assert PIIFilter(ips=False)(text).fields == {"pii_emails": 2}
    assert PIIFilter()("Nothing personal here.").fields == {}


CHINESE = (
    "北京是中华人民共和国的首都，也是全国的政治、文化和国际交往中心。这座城市有三千多年的建城史，"
    "拥有众多名胜古迹，例如故宫、天坛和长城。"
)


def test_min_length_counts_characters_for_scripts_without_spaces():
    assert len(CHINESE.split()) == 1
    assert MinLengthFilter(min_words=20)(CHINESE).keep
    assert not MinLengthFilter(min_words=20)("北京是首都。").keep
    assert not MinLengthFilter(min_words=20)("Short English text of six words.").keep


MATH_PAPER = r"""\section{Results}
We prove the bound below.
\begin{equation}
\mathcal{L}(\theta) = -\sum_{i=1}^{N} \log p_\theta(x_i \mid x_{<i}) + \lambda \|\theta\|_2^2
\end{equation}
\begin{align*}
\nabla_\theta \mathcal{L} &= -\sum_{i} \frac{\partial}{\partial \theta} \log p_\theta(x_i) + 2\lambda\theta \\
\|\nabla_\theta \mathcal{L}\|_2 &\le \sqrt{N} G + 2 \lambda R
\end{align*}
Hence $\eta \le 1/L$ gives $f(x_{t+1}) \le f(x_t) - \frac{\eta}{2}\|\nabla f(x_t)\|^2$ and
$$\sum_{t=0}^{T-1} \|\nabla f(x_t)\|^2 \le \frac{2 (f(x_0) - f^*)}{\eta}.$$
\[ \mathbb{E}[\|g_t\|^2] \le \sigma^2 + \|\nabla f(x_t)\|^2, \quad \forall t \in \{0,\dots,T-1\} \]
"""


def test_language_id_of_latex_ignores_math():
    f = LanguageFilter(languages=["en"], threshold=0.65)
    v = f(MATH_PAPER)
    assert v.keep and v.fields["language"] == "en", v
    plain = LanguageFilter(languages=["en"], threshold=0.65, strip_latex=False)(MATH_PAPER)
    assert plain.fields["language_score"] < v.fields["language_score"]


def test_filter_settings_of_the_new_filters_are_type_checked():
    with pytest.raises(ConfigError, match="eval_sets.*must be a list of str"):
        build_filter_chain(
            Config(
                {"chains": {"c4": ["decontaminate"]}, "decontaminate": {"eval_sets": "x.txt"}}, "text.clean.filters"
            ),
            "c4",
        )
    with pytest.raises(ConfigError, match="emails.*must be bool"):
        build_filter_chain(Config({"chains": {"c4": ["pii"]}, "pii": {"emails": "yes"}}, "text.clean.filters"), "c4")
