"""`jamtrain generate`: sample text, or a picture from a caption (classifier-free guidance), from a
trained run; writes sample.json, sample.txt and image-N.png into --out."""

from __future__ import annotations

import argparse


def _ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of token ids: {text!r}") from None


def _generate(args: argparse.Namespace) -> int:
    import torch

    from jamtrain.generate import Sampling
    from jamtrain.sample_files import find_parts, generate_sample, load_parts

    s = Sampling(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        guidance=args.guidance,
        max_new_tokens=args.max_new_tokens,
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_parts(find_parts(args.run, args.tokenizer, args.vqvae))
    files = generate_sample(loaded, args.out, s, args.prompt, args.prompt_ids, args.image)
    for f in files:
        print(f"wrote {f}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="sample text, or an image from a caption, from a trained model")
    p.add_argument(
        "--run",
        required=True,
        metavar="DIR",
        help="a `jamdata run` directory, a training output directory or an export directory",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text to continue, or the caption with --image")
    src.add_argument("--prompt-ids", type=_ids, help="the prompt as joint-vocabulary token ids (e.g. '5 17 9')")
    p.add_argument(
        "--image", action="store_true", help="text -> image: one picture for the caption, with classifier-free guidance"
    )
    p.add_argument("--out", required=True, help="output directory (sample.json, sample.txt, image-N.png)")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="same seed, model and prompt: same sample")
    p.add_argument("--max-new-tokens", type=int, default=64, help="text mode: tokens to add at most")
    p.add_argument("--tokenizer", help="SentencePiece model or tokenizer dataset (default: the run's tokenizer/)")
    p.add_argument("--vqvae", help="VQ-VAE directory (default: the run's vqvae/)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.set_defaults(func=_generate)
