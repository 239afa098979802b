"""``caption``: auto-caption a dataset folder with a model, and/or edit its captions in bulk."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

NAME = "caption"
HELP = "write captions with a BLIP-style captioner or a tagger, or edit existing captions"
DESCRIPTION = (
    HELP
    + "\n\nWith --model: captions every image that has none (all with --overwrite); the edit options then"
    "\napply to the new captions. Without --model: the edit options apply to the existing caption files."
    "\nExamples:"
    "\n  python -m trainer caption data/ --model Salesforce/blip-image-captioning-base --prefix sks"
    "\n  python -m trainer caption data/ --replace-tag 1girl woman --dedupe --sort --keep-tokens 1"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="dataset folder (kohya `N_name class` subfolders included)")
    gen = parser.add_argument_group("captioning model")
    gen.add_argument("--model", help="local model folder or hub id of the captioner")
    gen.add_argument("--kind", choices=("blip", "tagger"), default="blip", help="image-to-text model or multi-label tagger")
    gen.add_argument("--overwrite", action="store_true", help="also re-caption images that already have captions")
    gen.add_argument("--batch-size", type=int, default=4, help="images per model call (default 4)")
    gen.add_argument("--max-new-tokens", type=int, default=40, help="BLIP: longest caption in tokens")
    gen.add_argument("--num-beams", type=int, default=1, help="BLIP: beam search width (1: greedy)")
    gen.add_argument("--prompt", default="", help='BLIP: text the caption continues, e.g. "a photo of"')
    gen.add_argument("--threshold", type=float, default=0.35, help="tagger: minimum tag score (default 0.35)")
    gen.add_argument("--device", default="auto", help="auto, cpu or cuda")
    gen.add_argument("--revision", default="", help="hub revision of --model")
    edit = parser.add_argument_group("caption edits")
    edit.add_argument("--prefix", default="", help="tag to put first, e.g. the trigger word")
    edit.add_argument("--suffix", default="", help="tag to put last")
    edit.add_argument("--replace", nargs=2, metavar=("OLD", "NEW"), action="append", default=[], help="replace text anywhere")
    edit.add_argument("--replace-tag", nargs=2, metavar=("OLD", "NEW"), action="append", default=[],
                      help='replace a whole tag ("" removes it)')
    edit.add_argument("--dedupe", action="store_true", help="remove repeated tags")
    edit.add_argument("--sort", action="store_true", help="sort tags alphabetically")
    edit.add_argument("--keep-tokens", type=int, default=0, help="with --sort: leading tags that stay in place")
    edit.add_argument("--dry-run", action="store_true", help="without --model: list what would change, write nothing")


def _edit_steps(args: argparse.Namespace) -> list:
    from trainer.data.captions import dedupe_tags, replace_text, sort_tags

    steps = [partial(replace_text, old=old, new=new) for old, new in args.replace]
    steps += [partial(replace_text, old=old, new=new, whole_tag=True) for old, new in args.replace_tag]
    if args.dedupe:
        steps.append(dedupe_tags)
    if args.sort:
        steps.append(partial(sort_tags, keep_tokens=args.keep_tokens))
    return steps


def run(args: argparse.Namespace) -> int:
    from trainer.data.captioning import (
        CaptionerOptions,
        caption_folder,
        compose_edits,
        edit_captions,
        load_captioner,
    )
    from trainer.errors import UserFacingError

    if not args.folder.is_dir():
        raise UserFacingError(f"caption: folder not found: {args.folder}")
    if args.batch_size <= 0:
        raise UserFacingError(f"--batch-size must be a positive integer, got {args.batch_size}")
    steps = _edit_steps(args)
    has_edits = bool(steps or args.prefix or args.suffix)
    edit = compose_edits(args.prefix, args.suffix, steps)
    if args.model:
        options = CaptionerOptions(
            model=args.model, kind=args.kind, device=args.device, max_new_tokens=args.max_new_tokens,
            num_beams=args.num_beams, prompt=args.prompt, threshold=args.threshold, revision=args.revision,
        )
        result = caption_folder(args.folder, load_captioner(options), overwrite=args.overwrite,
                                batch_size=args.batch_size, edit=edit if has_edits else None)
        print(f"captioned {len(result.written)} image(s); kept {len(result.kept)} existing caption(s)")
    elif has_edits:
        result = edit_captions(args.folder, edit, dry_run=args.dry_run)
        verb = "would change" if args.dry_run else "changed"
        print(f"{verb} {len(result.written)} caption file(s); {len(result.kept)} unchanged")
        if args.dry_run:
            for path in result.written:
                print(f"  {path}")
    else:
        raise UserFacingError("caption: give --model to write captions, or an edit option (--prefix, --replace, ...)")
    for failure in result.failed:
        print(f"warning: {failure}")
    return 1 if result.failed else 0
