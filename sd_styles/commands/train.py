"""`sd-styles train`: learn a new concept (textual inversion) from a folder of 3-5 images."""

from __future__ import annotations

import argparse

from .common import add_model_options, finite_float, non_negative_int, positive_int, print_paths, seed_int


def register(sub) -> None:
    from ..training_config import FORMATS, LR_SCHEDULERS

    p = sub.add_parser("train", help="learn a new concept from 3-5 images (textual inversion)")
    add_model_options(p, default_model="CompVis/stable-diffusion-v1-4")
    p.add_argument("--images", required=True, metavar="DIR", help="folder of training pictures (any size/format)")
    p.add_argument("--token", required=True, help="placeholder token to learn, e.g. '<my-style>'")
    p.add_argument("--init-word", required=True, metavar="W", help="the vectors start as this word (e.g. cat, painting)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="output: .safetensors (diffusers), .pt (a1111) or a folder (sd-concepts, or diffusers' "
                        "learned_embeds.safetensors inside); artefacts go to FILE.training/")
    p.add_argument("--format", default="diffusers", choices=list(FORMATS))
    p.add_argument("--property", dest="learnable_property", default="object", choices=["object", "style"],
                   help="prompt templates: object ('a photo of a <tok>') or style ('a painting in the style of <tok>')")
    p.add_argument("--steps", type=positive_int, default=3000, help="optimizer steps (default 3000)")
    p.add_argument("--size", type=positive_int, help="training resolution (default: the model's native size)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--lr", type=finite_float, default=5e-4, help="learning rate (default 5e-4)")
    p.add_argument("--scale-lr", action=argparse.BooleanOptionalAction, default=True,
                   help="multiply --lr by batch size x gradient accumulation (default on, as diffusers' README)")
    p.add_argument("--lr-scheduler", default="constant", choices=list(LR_SCHEDULERS))
    p.add_argument("--lr-warmup-steps", type=non_negative_int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--grad-accum", type=positive_int, default=4, help="micro-batches per optimizer step (default 4)")
    p.add_argument("--num-vectors", type=positive_int, default=1, help="vectors for the token (default 1)")
    p.add_argument("--preview-every", type=non_negative_int, default=500, metavar="N",
                   help="render a preview every N steps (0: never; default 500)")
    p.add_argument("--preview-prompt", help="preview prompt (default: the first template with the token)")
    p.add_argument("--preview-steps", type=positive_int, default=25, help="sampling steps per preview (default 25)")
    p.add_argument("--save-every", type=non_negative_int, default=500, metavar="N",
                   help="checkpoint every N steps (0: only at the end; default 500)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint of this --out")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run of this --out and start again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training import train

    if args.size is not None and args.size % 8:
        from ..errors import BadInput

        raise BadInput(f"--size must be a multiple of 8, got {args.size}")
    result = train(args.model, args.images, args.token, args.init_word, args.out, resume=args.resume,
                   overwrite=args.overwrite, device=args.device, dtype=args.dtype, progress=not args.no_progress,
                   steps=args.steps, size=args.size, seed=args.seed, learnable_property=args.learnable_property,
                   lr=args.lr, scale_lr=args.scale_lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
                   num_vectors=args.num_vectors, lr_scheduler=args.lr_scheduler,
                   lr_warmup_steps=args.lr_warmup_steps, preview_every=args.preview_every,
                   preview_prompt=args.preview_prompt, preview_steps=args.preview_steps,
                   save_every=args.save_every, format=args.format)
    print_paths(result.files)
    return 0
