"""Textual inversion: learn a new token's vectors from 3-5 images, as diffusers' example script does.

Per micro-batch: pick images (epoch-shuffled), flip half of them, fill a random object/style template
with the placeholder, encode the picture with the VAE, add DDPM noise at a random timestep, and take
the MSE between the UNet's prediction and its target (epsilon or v, by the scheduler's
`prediction_type`). Only the placeholder's fp32 vectors learn (AdamW); the UNet, VAE and every other
embedding row stay frozen. On CUDA fp16 the forward runs under autocast with a GradScaler; bf16 needs none.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .errors import BadInput, RuntimeFailure
from .training_config import TrainConfig
from .training_data import draw, prepare, read_image_folder, step_generator, to_pixels
from .training_outputs import output_path, write_embedding
from .training_state import (RunFiles, check_resumable, load_checkpoint, save_checkpoint, set_rng_states,
                             write_loss_csv)
from .training_tokens import TrainableTokens, add_placeholder, check_token, initial_vectors, vocab_tokens

log = logging.getLogger(__name__)
LOSS_CSV_EVERY = 25  # loss.csv is rewritten (atomically) this often, and at every checkpoint and preview


@dataclass
class TrainResult:
    """What a run produced."""

    out: Path                          # the embedding file (folder for sd-concepts)
    files: list[Path]                  # every file written: output, metadata, loss.csv, previews, checkpoints
    token: str
    vectors: torch.Tensor              # (n, d) fp32, the learned vectors
    losses: list[tuple[int, float, float]]  # (step, loss, lr) per optimizer step, from step 1
    previews: list[Path] = field(default_factory=list)
    resumed_from: int = 0              # the checkpoint step this run started from (0: a fresh run)
    model: object = None               # the StyleModel, with the new concept loaded


def train(model, images: str | Path, token: str, init_word: str, out: str | Path, *, resume: bool = False,
          overwrite: bool = False, device: str = "auto", dtype: str = "auto", progress: bool = True,
          **settings) -> TrainResult:
    """Learn `token` from the pictures in `images`; `model` is a StyleModel or what `load_model` takes.

    `settings` are TrainConfig fields (steps, size, seed, property, lr, ...). `resume` continues from the
    last checkpoint of the same output; without it an output with checkpoints is refused unless `overwrite`.
    """
    from .models import load_model

    config = TrainConfig(token=token, init_word=init_word, **settings).check()
    files = RunFiles(output_path(out, config.format, token))
    pictures = read_image_folder(images)  # a bad folder fails before any weights load
    checkpoint = _start(files, resume, overwrite)
    if isinstance(model, str):
        model = load_model(model, device=device, dtype=_train_dtype(device, dtype))
    if getattr(model, "family", "sd1") != "sd1":
        raise BadInput(f"--model {model.source} is an SDXL model; training supports SD 1.x and 2.x models for now")
    size = config.size or model.native_size[0]
    config = replace(config, size=size)
    check_token(model, token, config.num_vectors)
    init = initial_vectors(model, init_word, config.num_vectors)  # a bad init word fails before the model changes
    meta = {"model": model.source, "model_revision": model.revision, "dtype": str(model.dtype).split(".")[-1],
            "images": [{"name": p.path.name, "sha256": p.sha256} for p in pictures], **config.settings()}
    state = load_checkpoint(checkpoint) if checkpoint else None
    if state is not None:
        check_resumable(state["settings"], meta, checkpoint)
        init = state["vectors"]
    if token in model.concepts:  # training again in one session (a re-run notebook cell): the new run replaces it
        from .concepts import remove_concept

        log.warning("replacing the loaded concept %s with the one being trained", token)
        remove_concept(model, token)
    for module in (model.pipe.unet, model.pipe.vae, model.pipe.text_encoder):
        module.requires_grad_(False)  # only the placeholder vectors learn; no gradients for the weights
    ids = add_placeholder(model, token, config.num_vectors)
    tokens = TrainableTokens.attach(model, ids, init)
    try:
        run = _Run(model, config, files, pictures, tokens, meta, progress)
        run.restore(state)
        run.loop()
    finally:
        tokens.detach_hook()
    return run.finish()


def _train_dtype(device: str, dtype: str) -> str:
    """auto: bf16 on CUDA GPUs that have it (no loss scaling needed), else load_model's choice."""
    if dtype == "auto" and device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return dtype


def _grad_scaler():
    """torch.amp.GradScaler('cuda') (torch >= 2.3), else the older torch.cuda.amp one."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()


def _start(files: RunFiles, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to resume from (None: a fresh run); refuses to mix a fresh run into an old one."""
    latest = files.latest_checkpoint()
    if resume:
        if latest is None:
            log.warning("no checkpoint in %s: starting a new run", files.checkpoints)
        return latest
    if files.folder.exists():
        if not overwrite:
            raise BadInput(f"{files.folder} holds an earlier run: pass --resume to continue it, or --overwrite "
                           "to start again")
        shutil.rmtree(files.folder)
    return None


class _Run:
    """The state of one training run and its loop."""

    def __init__(self, model, config: TrainConfig, files: RunFiles, pictures, tokens: TrainableTokens, meta: dict,
                 progress: bool):
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        self.model, self.config, self.files, self.tokens, self.meta, self.progress = \
            model, config, files, tokens, meta, progress
        self.arrays = [prepare(p.image, config.size, config.center_crop) for p in pictures]  # (S, S, 3) uint8
        self.noise_scheduler = DDPMScheduler.from_config(model.pipe.scheduler.config)
        self.optimizer = torch.optim.AdamW([tokens.vectors], lr=config.effective_lr, betas=(0.9, 0.999),
                                           weight_decay=config.weight_decay, eps=1e-8)
        self.lr_scheduler = get_scheduler(config.lr_scheduler, self.optimizer, num_warmup_steps=config.lr_warmup_steps,
                                          num_training_steps=config.steps)
        cuda_fp16 = model.device.type == "cuda" and model.dtype == torch.float16
        self.scaler = _grad_scaler() if cuda_fp16 else None
        self.moments: dict[tuple[int, bool], tuple[torch.Tensor, torch.Tensor]] = {}  # VAE mean/std per picture+flip
        self.placeholder = " ".join(vocab_tokens(config.token, config.num_vectors))
        self.losses: list[tuple[int, float, float]] = []
        self.step = 0
        self.start = 0
        self.written: list[Path] = []
        self.previews: list[Path] = []
        self.last_checkpoint: Path | None = None

    def restore(self, state: dict | None) -> None:
        """Continue from a checkpoint's optimizer, scheduler, scaler and RNG states."""
        if state is None:
            return
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_states(state["rng"])
        self.losses = [(int(s), float(v), float(lr)) for s, v, lr in state["losses"]]
        self.step = self.start = int(state["step"])

    def autocast(self):
        """Mixed precision where the model runs in half precision; plain fp32 otherwise."""
        if self.model.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=self.model.dtype)

    def latents(self, images: list[int], flips: list[bool], g: torch.Generator) -> torch.Tensor:
        """VAE latents (B, 4, h, w) sampled from each picture's cached posterior with `g`'s noise."""
        vae = self.model.pipe.vae
        out = []
        for i, flip in zip(images, flips):
            if (i, flip) not in self.moments:
                pixels = to_pixels(self.arrays[i], flip)[None].to(self.model.device, vae.dtype)  # (1, 3, S, S)
                with torch.no_grad():
                    dist = vae.encode(pixels).latent_dist
                self.moments[(i, flip)] = (dist.mean.float(), dist.std.float())
            mean, std = self.moments[(i, flip)]
            out.append(mean + std * torch.randn(mean.shape, generator=g).to(mean.device))
        latents = torch.cat(out)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * vae.config.scaling_factor

    def micro_loss(self, micro: int) -> torch.Tensor:
        """The diffusion loss of one micro-batch of this step."""
        c, pipe, device = self.config, self.model.pipe, self.model.device
        d = draw(c.seed, self.step, micro, c.batch_size, c.grad_accum, len(self.arrays), c.templates, self.placeholder)
        g = step_generator(c.seed, self.step * c.grad_accum + micro, 3)
        latents = self.latents(d.images, d.flips, g)  # (B, 4, h, w) fp32
        noise = torch.randn(latents.shape, generator=g).to(device)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(d.images),), generator=g).to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        elif self.noise_scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            raise BadInput(f"cannot train on a model predicting {self.noise_scheduler.config.prediction_type!r}")
        ids = pipe.tokenizer(d.prompts, padding="max_length", truncation=True,
                             max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids.to(device)
        with self.autocast():
            states = pipe.text_encoder(ids)[0]  # (B, 77, d)
            pred = pipe.unet(noisy.to(pipe.unet.dtype), t, encoder_hidden_states=states.to(pipe.unet.dtype)).sample
        return F.mse_loss(pred.float(), target.float(), reduction="mean")

    def one_step(self) -> float:
        """Accumulate the micro-batches, step the optimizer once, write the vectors back; returns the mean loss."""
        c, total = self.config, 0.0
        for micro in range(c.grad_accum):
            loss = self.micro_loss(micro)
            if not torch.isfinite(loss):
                self.fail(f"the loss is {loss.item()}")
            scaled = loss / c.grad_accum
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += loss.item()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the step when the fp16 gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(self.tokens.vectors).all():
            self.fail("the learned vectors became non-finite")
        self.tokens.sync(self.model)
        return total / c.grad_accum

    def fail(self, what: str) -> None:
        """Stop with a clear message; the checkpoints on disk are all from finite steps."""
        write_loss_csv(self.files.loss_csv, self.losses)
        kept = f"the last good checkpoint is {self.last_checkpoint or self.files.latest_checkpoint()}" \
            if (self.last_checkpoint or self.files.latest_checkpoint()) else "no checkpoint was saved yet"
        raise RuntimeFailure(f"training stopped at step {self.step + 1}: {what} (NaN/inf); {kept}. Lower --lr or use "
                             "--dtype fp32 (or bf16), then start again or --resume")

    def loop(self) -> None:
        """Train from the current step to config.steps, with the bar, loss log, previews and checkpoints."""
        c = self.config
        bar = tqdm(total=c.steps, initial=self.step, desc=f"training {c.token}", disable=not self.progress)
        with bar:
            while self.step < c.steps:
                lr = self.lr_scheduler.get_last_lr()[0]
                loss = self.one_step()
                self.step += 1
                self.losses.append((self.step, loss, lr))
                recent = [v for _, v, _ in self.losses[-20:]]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{lr:.2e}")
                bar.update(1)
                self.after_step()

    def after_step(self) -> None:
        """Previews, checkpoints and the loss log when their step comes."""
        c, s = self.config, self.step
        if c.preview_every and s % c.preview_every == 0:
            self.previews.append(self.preview(s))
        if (c.save_every and s % c.save_every == 0) or s == c.steps:
            self.checkpoint()
        if s % LOSS_CSV_EVERY == 0 or (c.preview_every and s % c.preview_every == 0):
            write_loss_csv(self.files.loss_csv, self.losses)

    def checkpoint(self) -> None:
        path = save_checkpoint(self.files.checkpoint(self.step), step=self.step, vectors=self.tokens.vectors,
                               optimizer=self.optimizer, lr_scheduler=self.lr_scheduler, scaler=self.scaler,
                               losses=self.losses, settings=self.meta)
        self.last_checkpoint = path
        write_loss_csv(self.files.loss_csv, self.losses)
        self.written.append(path)

    def preview(self, step: int) -> Path:
        """Render the preview prompt with the current vectors through our own loop, fixed seed."""
        from .atomic import atomic_save_image
        from .rendering import make_recipe, render

        c = self.config
        prompt = c.preview_prompt or c.templates[0].format(c.token)
        recipe = make_recipe(self.model, prompt, seed=c.seed, steps=c.preview_steps, width=c.size, height=c.size)
        with torch.no_grad():
            [result] = render(self.model, [recipe], progress=False)
        return atomic_save_image(result.image, self.files.preview(step), "PNG")

    def finish(self) -> TrainResult:
        """Write the output and its metadata, load the concept into the model, list every file."""
        from .atomic import atomic_write_text
        from .concepts import add_concept

        c = self.config
        meta = {**self.meta, "step": self.step, "final_loss": self.losses[-1][1] if self.losses else math.nan}
        written = write_embedding(self.files.out, c.format, c.token, self.tokens.vectors, meta, c.learnable_property)
        written.append(atomic_write_text(self.files.metadata, json.dumps(meta, indent=2, sort_keys=True) + "\n"))
        written.append(write_loss_csv(self.files.loss_csv, self.losses))
        add_concept(self.model, str(self.files.out), token=c.token)  # read back through our own loader
        return TrainResult(out=self.files.out, files=written + self.previews + self.written, token=c.token,
                           vectors=self.tokens.vectors.detach().cpu().clone(), losses=list(self.losses),
                           previews=list(self.previews), resumed_from=self.start, model=self.model)
