"""Write sample_data/instruct/: how-to articles, conversations and mmc4-format documents with small
generated pictures, including a few deliberately broken records that the builder must reject.

Deterministic: run it again and the files are byte-identical.
    python sample_data/make_instruct.py [OUT_DIR]
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 96
PALETTE = [(214, 69, 65), (65, 131, 215), (46, 160, 67), (241, 196, 15), (142, 68, 173),
           (230, 126, 34), (26, 188, 156), (52, 73, 94)]

HOWTO = [
    ("fold-a-paper-boat", "Fold a Paper Boat", "A paper boat takes one sheet and five minutes.",
     ["Fold a rectangular sheet in half from top to bottom.",
      "Bring the top corners down to the centre line to form a triangle.",
      "Fold the bottom strips up on both sides.",
      "Open the shape from the middle and flatten it into a square.",
      "Pull the top points apart gently to open the boat."]),
    ("plant-a-bean-seed", "Plant a Bean Seed", "Beans sprout quickly, which makes them a good first plant.",
     ["Fill a small pot with moist potting soil.",
      "Press the seed two centimetres into the soil.",
      "Place the pot on a bright windowsill.",
      "Water whenever the top of the soil feels dry."]),
    ("brew-loose-leaf-tea", "Brew Loose Leaf Tea", "",
     ["Heat fresh water until it just starts to simmer.",
      "Measure one teaspoon of leaves per cup into an infuser.",
      "Pour the water over the leaves and wait three minutes.",
      "Remove the infuser and let the tea cool a little."]),
    ("build-a-bird-feeder", "Build a Simple Bird Feeder", "An empty carton becomes a feeder in an afternoon.",
     ["Rinse an empty milk carton and let it dry.",
      "Cut a window on two opposite sides, leaving a lip at the bottom.",
      "Push a wooden spoon through the carton below each window as a perch.",
      "Fill the bottom with seed and hang it from a branch."]),
    ("clean-a-window", "Clean a Window Without Streaks", "Work in the shade so the glass does not dry too fast.",
     ["Mix warm water with a few drops of dish soap.",
      "Wash the glass with a sponge from top to bottom.",
      "Pull a squeegee across in overlapping strokes.",
      "Wipe the edges with a dry microfibre cloth."]),
    ("draw-a-five-point-star", "Draw a Five Point Star", "",
     ["Mark five evenly spaced points around an imaginary circle.",
      "Connect every second point with a straight line.",
      "Keep going until you return to the first point.",
      "Erase the guide marks and colour the star."]),
    ("repot-a-houseplant", "Repot a Houseplant", "Spring is the best season for repotting.",
     ["Water the plant a day before you repot it.",
      "Tip the pot and slide the plant out carefully.",
      "Loosen the roots and trim any that are dead.",
      "Set the plant in a larger pot and fill around it with fresh soil.",
      "Water thoroughly and keep it out of direct sun for a week."]),
    ("make-a-sandwich", "Make a Cucumber Sandwich", "A light sandwich for a summer lunch.",
     ["Slice a cucumber as thinly as you can.",
      "Spread butter on two slices of bread.",
      "Layer the cucumber on one slice and season with salt.",
      "Close the sandwich and cut off the crusts."]),
]

CONVERSATIONS = [
    ("shapes-1", [("user", ["What shape is shown here?", "IMG:circle:0"]),
                  ("assistant", ["It is a red circle on a white background."])]),
    ("shapes-2", [("system", ["Answer briefly."]),
                  ("user", ["IMG:square:1", "Which colour dominates this picture?"]),
                  ("assistant", ["Blue."])]),
    ("draw-request", [("user", ["Draw me a green square."]),
                      ("assistant", ["Here is a green square:", "IMG:square:2", "Would you like another colour?"])]),
    ("compare", [("user", ["Compare these two pictures.", "IMG:triangle:3", "IMG:circle:3"]),
                 ("assistant", ["The first is a triangle and the second is a circle; both are yellow."])]),
    ("multi-turn", [("user", ["Show me a purple shape."]),
                    ("assistant", ["IMG:star:4"]),
                    ("user", ["Now make it orange."]),
                    ("assistant", ["Sure, here it is in orange:", "IMG:star:5"])]),
]

MMC4 = [
    ("https://garden.example.org/spring-bulbs", [
        "Spring bulbs are planted in autumn.", "Tulips prefer well drained soil.",
        "Daffodils tolerate light shade.", "Plant each bulb three times as deep as it is tall.",
        "Water once after planting and then leave them alone."], [1, 3]),
    ("https://kitchen.example.org/bread-basics", [
        "Bread needs only flour, water, salt and yeast.", "Mix the ingredients into a shaggy dough.",
        "Knead for ten minutes until smooth.", "Let the dough rise until doubled.",
        "Bake in a hot oven until the crust is deep brown."], [2, 4, 4]),
    ("https://bikes.example.org/fix-a-flat", [
        "A flat tyre is easy to fix at home.", "Remove the wheel from the frame.",
        "Lever the tyre off the rim and pull out the tube.", "Find the hole by listening for air.",
        "Patch it, refit the tube and inflate."], [0, 2]),
    ("https://sky.example.org/moon-phases", [
        "The moon shows different phases over a month.", "A new moon is almost invisible.",
        "The waxing crescent grows each evening.", "A full moon rises at sunset."], [3]),
    ("https://craft.example.org/knitting-start", [
        "Knitting starts with casting on.", "Make a slip knot on one needle.",
        "Loop the yarn around your thumb and lift it onto the needle.",
        "Repeat until you have enough stitches."], [1, 2]),
]


def picture(index: int, shape: str | None = None, colour_index: int | None = None) -> bytes:
    """A small PNG: a coloured shape whose kind, colour and position depend on `index`."""
    colour = PALETTE[index % len(PALETTE) if colour_index is None else colour_index]
    kind = shape or ("circle", "square", "triangle", "star")[index % 4]
    im = Image.new("RGB", (SIZE, SIZE), (250, 250, 246))
    d = ImageDraw.Draw(im)
    off = (index * 7) % 20
    box = (14 + off // 2, 14 + off // 3, SIZE - 14 - off // 3, SIZE - 14 - off // 2)
    if kind == "circle":
        d.ellipse(box, fill=colour)
    elif kind == "square":
        d.rectangle(box, fill=colour)
    elif kind == "triangle":
        d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour)
    else:
        cx, cy, r = SIZE // 2, SIZE // 2, 34
        import math
        pts = [(cx + (r if k % 2 == 0 else r // 2.5) * math.sin(k * math.pi / 5),
                cy - (r if k % 2 == 0 else r // 2.5) * math.cos(k * math.pi / 5)) for k in range(10)]
        d.polygon(pts, fill=colour)
    for k in range(index % 5):
        d.line([(8, 10 + 16 * k), (SIZE - 8, 14 + 16 * k)], fill=(90, 90, 90), width=2)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def url_sha1(url: str) -> str:
    return hashlib.sha1(url.encode("utf-8")).hexdigest()


def write_howto(out: Path) -> None:
    img_dir = out / "howto" / "images"
    img_dir.mkdir(parents=True)
    articles, n = [], 0
    for slug, title, intro, steps in HOWTO:
        art = {"id": slug, "title": title, "intro": intro, "steps": []}
        for k, text in enumerate(steps, 1):
            name = f"{slug}-{k}.png"
            (img_dir / name).write_bytes(picture(n))
            n += 1
            art["steps"].append({"text": text, "image": f"images/{name}"})
        if not intro:
            del art["intro"]
        articles.append(art)
    # the last step of one article has no picture: allowed
    articles[2]["steps"][-1].pop("image")
    (out / "howto" / "articles.json").write_text(json.dumps(articles, indent=1) + "\n")
    # broken on purpose: a missing image, a corrupt image, no steps
    (img_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a picture")
    bad = [
        {"id": "bad-missing-image", "title": "Tie a Knot",
         "steps": [{"text": "Cross the ends.", "image": "images/does-not-exist.png"}]},
        {"id": "bad-corrupt-image", "title": "Sharpen a Pencil",
         "steps": [{"text": "Turn the pencil in the sharpener.", "image": "images/corrupt.png"}]},
        {"id": "bad-no-steps", "title": "Do Nothing", "intro": "This article forgot its steps.", "steps": []},
    ]
    (out / "howto" / "broken.jsonl").write_text("".join(json.dumps(b) + "\n" for b in bad))


def write_conversations(out: Path) -> None:
    img_dir = out / "conversations" / "images"
    img_dir.mkdir(parents=True)
    lines, n = [], 100
    for cid, turns in CONVERSATIONS:
        rec = {"id": cid, "turns": []}
        for role, parts in turns:
            content = []
            for part in parts:
                if part.startswith("IMG:"):
                    _, shape, colour = part.split(":")
                    name = f"{cid}-{n}.png"
                    (img_dir / name).write_bytes(picture(n, shape, int(colour)))
                    n += 1
                    content.append({"image": f"images/{name}"})
                else:
                    content.append({"text": part})
            rec["turns"].append({"role": role, "content": content if len(content) > 1 or "image" in content[0]
                                 else content[0]["text"]})
        lines.append(rec)
    lines.append({"id": "bad-role", "turns": [{"role": "moderator", "content": "Please stay on topic."},
                                             {"role": "assistant", "content": "Understood."}]})
    (out / "conversations" / "conversations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def write_mmc4(out: Path) -> None:
    store = out / "mmc4" / "image-store"
    store.mkdir(parents=True)
    lines, n = [], 200
    for url, texts, matched in MMC4:
        infos = []
        for k, idx in enumerate(matched):
            img_url = f"{url.replace('https://', 'https://img.')}/photo-{k}.png"
            (store / f"{url_sha1(img_url)}.png").write_bytes(picture(n))
            n += 1
            infos.append({"image_name": f"{url_sha1(img_url)[:12]}.png", "raw_url": img_url,
                          "matched_text_index": idx, "matched_sim": round(0.2 + 0.01 * k, 2),
                          "face_detections": None})
        lines.append({"url": url, "text_list": texts, "image_info": infos,
                      "similarity_matrix": [[0.2] * len(texts) for _ in infos]})
    # an image that is not in the store (dropped with a reason, document kept)
    lines[0]["image_info"].append({"image_name": "0000deadbeef.png", "raw_url": "https://img.example.org/not-stored.png",
                                   "matched_text_index": 0, "matched_sim": 0.21, "face_detections": None})
    # broken on purpose: matched index out of range
    lines.append({"url": "https://broken.example.org/out-of-range", "text_list": ["Only one sentence."],
                  "image_info": [{"image_name": "x.png", "raw_url": lines[1]["image_info"][0]["raw_url"],
                                  "matched_text_index": 5, "matched_sim": 0.3, "face_detections": None}],
                  "similarity_matrix": [[0.3]]})
    (out / "mmc4" / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def main(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_howto(out)
    write_conversations(out)
    write_mmc4(out)
    (out / "README.md").write_text(
        "Generated by `sample_data/make_instruct.py` (do not edit by hand).\n\n"
        "- `howto/articles.json`: how-to articles, one picture per step (`images/`).\n"
        "- `howto/broken.jsonl`: a missing image, a corrupt image and an article without steps (rejected).\n"
        "- `conversations/conversations.jsonl`: mixed-modal conversations; `bad-role` uses an unknown role.\n"
        "- `mmc4/docs.jsonl`: mmc4-format documents; images are URLs resolved against `mmc4/image-store/`\n"
        "  (file name = sha1 of the URL). One image is not in the store and one record has an\n"
        "  out-of-range `matched_text_index`.\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "instruct")
