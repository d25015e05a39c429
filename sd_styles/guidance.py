"""Loss guidance as a wrapper around the denoiser (the model function), not flags in the loop.

Per guided step, as in the classic notebook: predict x0 from the noise prediction, decode it to
pixels, take grad = d(scale * loss)/d(latents) with `torch.autograd.grad`, and move the latents
against it (sigma schedulers: latents -= grad * sigma^2; alpha schedulers: the same move expressed
in their latent scale, grad * (1 - alpha_bar)). The loop then steps the scheduler exactly once.
Only the decoder (and the loss) is differentiated: the UNet output is a constant here.
"""

from __future__ import annotations

from typing import Callable

import torch

from .recipe import Guidance
from .sampling import Denoiser, guidance_step_size, noise_levels, predict_x0

Loss = Callable[[torch.Tensor], torch.Tensor]          # (N, 3, H, W) in [0, 1] -> scalar
Decoder = Callable[[torch.Tensor], torch.Tensor]       # raw latents (N, 4, h, w) -> (N, 3, H, W) in [0, 1]


def cell_losses(images: torch.Tensor, terms: list[tuple[Loss, float]]) -> torch.Tensor:
    """Weighted loss of each cell (B,): sum_j scale_j * loss_j(x_k), cell by cell so batching never mixes cells."""
    per_cell = [sum(scale * loss(images[k:k + 1]) for loss, scale in terms) for k in range(images.shape[0])]
    return torch.stack([torch.as_tensor(v, dtype=torch.float32, device=images.device).reshape(()) for v in per_cell])


def loss_gradient(scheduler, latents: torch.Tensor, out: torch.Tensor, i: int, t: torch.Tensor, decoder: Decoder,
                  terms: list[tuple[Loss, float]], sigma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(d sum_k L_k / d latents, L_k per cell) with L_k = sum_j scale_j * loss_j(decode(x0(latents))).

    Computed in fp32 from an fp32 leaf: fp16 gradients of small losses underflow.
    """
    with torch.enable_grad():
        x = latents.detach().float().requires_grad_(True)
        x0 = predict_x0(scheduler, x, out.detach().float(), i, t, sigma)  # (B, 4, h, w), differentiable in x
        values = cell_losses(decoder(x0), terms)                     # (B,)
        (grad,) = torch.autograd.grad(values.sum(), x)
    return grad, values.detach()


def make_guided_denoiser(denoise: Denoiser, scheduler, guidance: Guidance, steps: int, decoder: Decoder,
                         terms: list[tuple[Loss, float]], history: list[torch.Tensor]) -> Denoiser:
    """Wrap `denoise` so guided steps move the latents down the gradient of the summed losses.

    Each guided step appends the cells' weighted losses (B,) to `history`, measured on the decoded x0
    and left on the device (read once after the loop: `loss_histories`). Terms with scale 0 are dropped:
    they cannot move the latents. The decoder always sees one cell per call, whatever the batching: a
    cell's gradient never depends on its companions, and the backward memory stays that of one image.
    The noise levels are read from the scheduler once, here, so the step loop never syncs with the device.
    """
    terms = [(loss, float(scale)) for loss, scale in terms if scale != 0]
    sigmas = noise_levels(scheduler)

    def guided(latents, i, t):
        latents, out = denoise(latents, i, t)
        if not terms or not guidance.active(i, steps):
            return latents, out
        parts = [loss_gradient(scheduler, x, o, i, t, decoder, terms, sigmas[i])
                 for x, o in zip(latents.split(1), out.split(1))]   # one cell per decoder call
        grad, values = torch.cat([g for g, _ in parts]), torch.cat([v for _, v in parts])
        history.append(values)
        move = grad * guidance_step_size(scheduler, i, t, sigmas[i])
        _move_pndm_stored_sample(scheduler, move)
        return (latents.float() - move).to(latents.dtype), out

    return guided


def loss_histories(history: list[torch.Tensor], cells: int) -> list[list[float]]:
    """Per-cell loss lists from the per-step (B,) tensors: one device read for the whole render."""
    if not history:
        return [[] for _ in range(cells)]
    return torch.stack(history, dim=1).cpu().tolist()   # (B, guided steps)


def _move_pndm_stored_sample(scheduler, move: torch.Tensor) -> None:
    """PNDM's second call redoes its first step from the sample it stored then, ignoring the latents passed in.

    Its PLMS warm-up is a two-call Heun step (timesteps t0, t1, t1, ...): at counter 1 `step` starts
    again from `cur_sample`, so the guidance move must land there too, or that step's guidance is lost.
    """
    stored = getattr(scheduler, "cur_sample", None)
    plms = getattr(scheduler.config, "skip_prk_steps", False)   # sd_styles' "pndm" always skips the PRK steps
    if plms and getattr(scheduler, "counter", None) == 1 and isinstance(stored, torch.Tensor):
        scheduler.cur_sample = (stored.float() - move).to(stored.dtype)
