"""Readers for the three interleaved sources; each turns one raw record into a `Document` or
raises `RejectedDocument` with the reason.

How-to articles (`format: howto`), a `.json` file holding one article or a list of them, or a
`.jsonl` file with one article per line:

    {"id": "make-tea", "title": "Make Tea", "intro": "optional text",
     "steps": [{"text": "Boil water.", "image": "images/make-tea-1.png"},
               {"text": "Steep the leaves.", "image_base64": "iVBORw0..."},
               {"text": "A step without a picture."}]}

`image` is a path relative to the article file (or an absolute path or URL). Such paths come from
the data, so they are read confined (jamdata.io.read_confined, policy from
`SourceSpec.input_policy`): only regular files under the article file's directory, the source's
`input_roots` or its image store; `..` or a symlink leading elsewhere, FIFOs, devices and files
over `instruct.image_max_bytes` are refused, and web URLs are never fetched.

mmc4 (`format: mmc4`): JSON lines with `text_list`, `image_info` (`raw_url`, `image_name`,
`matched_text_index`) and `url`. Each image goes right after its matched sentence (images matched to
the same sentence keep their `image_info` order). Images are never downloaded: they are looked up
in a local image store (see `ImageStore`), and an image not found there is dropped with a reason.

Conversations (`format: conversation`), JSON lines:

    {"id": "c1", "turns": [{"role": "user", "content": [{"text": "What is this?"}, {"image": "a.png"}]},
                           {"role": "assistant", "content": "A tea pot."}]}

`content` is a string or a list of parts, each `{"text": ...}`, `{"image": path}` or
`{"image_base64": ...}`. Roles: user -> instruction, assistant -> response, system -> context.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import posixpath
from typing import Any, Iterator

from jamdata.interleaved.document import (
    CONTEXT,
    INSTRUCTION,
    RESPONSE,
    Document,
    ImageRef,
    RejectedDocument,
    Segment,
    safe_key,
)
from jamdata.interleaved.template import Template
from jamdata.io import fs_and_path, open_input, open_url

FORMATS = ("howto", "mmc4", "conversation")
CONVERSATION_ROLES = {
    "user": INSTRUCTION,
    "human": INSTRUCTION,
    "assistant": RESPONSE,
    "gpt": RESPONSE,
    "system": CONTEXT,
}


def url_sha1(url: str) -> str:
    """Image-store file name (without extension) of a URL."""
    return hashlib.sha1(url.encode("utf-8")).hexdigest()


COMPRESSION_SUFFIXES = (".gz", ".zst", ".bz2", ".xz")


def iter_raw(path: str) -> Iterator[tuple[int, Any, str | None]]:
    """(offset, parsed record or None, parse error or None) for every record of a .json/.jsonl
    file (optionally compressed); a `.json` file may hold one object or a list (offset = list
    index), a `.jsonl` file one object per line (offset = byte offset of the line)."""
    logical = path
    for c in COMPRESSION_SUFFIXES:
        logical = logical.removesuffix(c)
    with open_input(path) as f:
        data = f.read()
    if logical.endswith(".json"):
        try:
            obj = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            yield 0, None, f"not valid JSON: {e}"
            return
        items = obj if isinstance(obj, list) else [obj]
        for i, item in enumerate(items):
            yield i, item, None
        return
    offset = 0
    for line in data.splitlines(keepends=True):
        if line.strip():
            try:
                yield offset, json.loads(line), None
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                yield offset, None, f"not valid JSON: {e}"
        offset += len(line)


def _resolve(base_file: str, ref: str) -> str:
    """Where `ref` points, as written (relative to the record file); whether it may be read is
    decided when the image is loaded, under the source's input policy."""
    if "://" in ref or ref.startswith("/"):
        return ref
    return posixpath.join(posixpath.dirname(base_file), ref)


def _inline(b64: Any, what: str) -> ImageRef:
    if not isinstance(b64, str):
        raise RejectedDocument(f"{what}: image_base64 must be a string")
    try:
        return ImageRef("inline", data=base64.b64decode(b64, validate=True))
    except (binascii.Error, ValueError) as e:
        raise RejectedDocument(f"{what}: image_base64 is not valid base64 ({e})") from None


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RejectedDocument(f"{what} must be a string, got {type(value).__name__}")
    return value.strip()


def howto_document(article: Any, file: str, offset: int, template: Template) -> Document:
    if not isinstance(article, dict):
        raise RejectedDocument(f"article must be a JSON object, got {type(article).__name__}")
    key = safe_key("howto", str(article.get("id") or f"{posixpath.basename(file)}-{offset}"))
    title = _text(article.get("title"), "title") if "title" in article else ""
    if not title:
        raise RejectedDocument("article has no title", json.dumps(article)[:200])
    intro = _text(article.get("intro", ""), "intro")
    steps = article.get("steps")
    if not isinstance(steps, list) or not steps:
        raise RejectedDocument("article has no steps", title)
    segs = [Segment.text_of(INSTRUCTION, template.instruction_format.format(title=title, intro=intro))]
    if intro and template.intro_role != "drop":
        segs.append(Segment.text_of(RESPONSE if template.intro_role == "response" else CONTEXT, intro))
    for n, step in enumerate(steps, 1):
        if not isinstance(step, dict):
            raise RejectedDocument(f"step {n} must be a JSON object", title)
        text = _text(step.get("text", ""), f"step {n} text")
        if not text:
            raise RejectedDocument(f"step {n} has no text", title)
        segs.append(Segment.text_of(RESPONSE, template.step_format.format(n=n, text=text)))
        if "image_base64" in step:
            segs.append(Segment.image_of(RESPONSE, _inline(step["image_base64"], f"step {n}")))
        elif step.get("image"):
            ref = _text(step["image"], f"step {n} image")
            segs.append(Segment.image_of(RESPONSE, ImageRef(ref, path=_resolve(file, ref))))
    return Document(key, "howto", segs, file, offset, meta={"title": title})


def conversation_document(record: Any, file: str, offset: int) -> Document:
    if not isinstance(record, dict):
        raise RejectedDocument(f"conversation must be a JSON object, got {type(record).__name__}")
    key = safe_key("conv", str(record.get("id") or f"{posixpath.basename(file)}-{offset}"))
    turns = record.get("turns")
    if not isinstance(turns, list) or not turns:
        raise RejectedDocument("conversation has no turns", json.dumps(record)[:200])
    segs: list[Segment] = []
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RejectedDocument(f"turn {t} must be a JSON object")
        role = CONVERSATION_ROLES.get(str(turn.get("role", "")).lower())
        if role is None:
            raise RejectedDocument(
                f"turn {t}: unknown role {turn.get('role')!r} (known: {', '.join(sorted(CONVERSATION_ROLES))})",
                json.dumps(turn)[:200],
            )
        content = turn.get("content")
        parts = [{"text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list) or not parts:
            raise RejectedDocument(f"turn {t}: content must be a string or a non-empty list of parts")
        for p, part in enumerate(parts):
            what = f"turn {t} part {p}"
            if not isinstance(part, dict):
                raise RejectedDocument(f"{what} must be a JSON object")
            if "text" in part:
                text = _text(part["text"], what)
                if text:
                    segs.append(Segment.text_of(role, text))
            elif "image_base64" in part:
                segs.append(Segment.image_of(role, _inline(part["image_base64"], what)))
            elif "image" in part:
                ref = _text(part["image"], what)
                segs.append(Segment.image_of(role, ImageRef(ref, path=_resolve(file, ref))))
            else:
                raise RejectedDocument(f"{what} has neither text nor image")
    if not any(s.role == RESPONSE for s in segs):
        raise RejectedDocument("conversation has no assistant turn with content")
    return Document(key, "conversation", segs, file, offset)


def mmc4_document(record: Any, file: str, offset: int, store: "ImageStore | None", min_images: int = 1) -> Document:
    if not isinstance(record, dict) or not isinstance(record.get("text_list"), list):
        raise RejectedDocument("mmc4 record needs a text_list list")
    texts = record["text_list"]
    url = str(record.get("url") or f"{posixpath.basename(file)}-{offset}")
    key = safe_key("mmc4", url_sha1(url)[:20])
    infos = record.get("image_info") or []
    if not isinstance(infos, list):
        raise RejectedDocument("image_info must be a list")
    after: dict[int, list[ImageRef]] = {}
    dropped: list[tuple[str, str]] = []
    for k, info in enumerate(infos):
        idx = info.get("matched_text_index") if isinstance(info, dict) else None
        if not isinstance(idx, int) or not 0 <= idx < len(texts):
            raise RejectedDocument(f"image {k}: matched_text_index {idx!r} out of range ({len(texts)} sentences)", url)
        img_url = str(info.get("raw_url") or "")
        found = store.lookup(img_url, info.get("image_name")) if store is not None else None
        if found is None:
            code, why = (
                ("no_image_store", "no image store configured")
                if store is None
                else ("not_in_image_store", "not in the image store")
            )
            dropped.append((f"img{k}", f"{code}: image {img_url or info.get('image_name')!r} {why} (never fetched)"))
            continue
        after.setdefault(idx, []).append(found)
    n_images = sum(len(v) for v in after.values())
    if n_images < min_images:
        reasons = "; ".join(r for _, r in dropped[:3])
        raise RejectedDocument(
            f"too_few_images: {n_images} image(s) resolved, need {min_images}" + (f" ({reasons})" if reasons else ""),
            url,
        )
    segs: list[Segment] = []
    for i, sentence in enumerate(texts):
        if isinstance(sentence, str) and sentence.strip():
            segs.append(Segment.text_of(CONTEXT, sentence.strip()))
        for ref in after.get(i, []):
            segs.append(Segment.image_of(CONTEXT, ref))
    return Document(key, "mmc4", segs, file, offset, loss="all", dropped=dropped, meta={"url": url})


class ImageStore:
    """Local images for URL-only sources, never fetched from the web.

    A directory (searched recursively) or a tar file. An entry is found by the record's
    `image_name` (mmc4's own file name, as in its image shards) or by `sha1(url)` as the file name
    with any extension (`<40 hex>.jpg`); the stem is what matters."""

    def __init__(self, path: str):

        self.path = str(path)
        fs, p = fs_and_path(self.path)
        self._index: dict[str, str] = {}
        if fs.isdir(p):
            proto = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
            prefix = "" if proto in ("file", "local") else f"{proto}://"
            for f in sorted(fs.find(p)):
                name = posixpath.basename(f)
                self._add(name, prefix + f)
        elif fs.exists(p) and self.path.endswith(".tar"):
            import tarfile

            with open_url(self.path, "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
                for m in tar.getmembers():
                    if m.isfile():
                        self._add(posixpath.basename(m.name), f"tar://{m.name}::{self.path}")
        else:
            raise FileNotFoundError(f"image store {self.path} is neither a directory nor a .tar file")

    def _add(self, name: str, where: str) -> None:
        self._index.setdefault(name, where)
        self._index.setdefault(name.split(".", 1)[0], where)

    def __len__(self) -> int:
        return len(set(self._index.values()))

    def lookup(self, url: str, image_name: str | None = None) -> ImageRef | None:
        for cand in (image_name, url_sha1(url) if url else None):
            if cand and cand in self._index:
                return ImageRef(url or str(image_name), path=self._index[cand])
            if cand and cand.split(".", 1)[0] in self._index:
                return ImageRef(url or str(image_name), path=self._index[cand.split(".", 1)[0]])
        return None
