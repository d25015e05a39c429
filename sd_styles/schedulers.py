"""Scheduler names of the command line -> diffusers schedulers configured from the model's own config."""

from __future__ import annotations

from .errors import BadInput

# name -> (diffusers class name, config overrides). lms is the default of the classic notebooks. The sigma
# spacing is pinned so a name means the same sampler whatever extras a model's scheduler config carries.
# Class names (not classes) keep this module, and so `sd-styles --help`, free of diffusers' heavy imports.
_PLAIN_SIGMAS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "lms": ("LMSDiscreteScheduler", _PLAIN_SIGMAS),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", _PLAIN_SIGMAS),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {**_DPMPP_2M, **_PLAIN_SIGMAS}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {**_DPMPP_2M, **_PLAIN_SIGMAS, "use_karras_sigmas": True}),
}
DEFAULT_SCHEDULER = "lms"

# Schedulers whose latents live in sigma space (x = x0 + sigma * eps, input scaled by 1/sqrt(sigma^2+1)).
_SIGMA_SPACE = ("LMSDiscreteScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler")


def check_scheduler(name: str) -> str:
    if name not in SCHEDULERS:
        raise BadInput(f"unknown scheduler {name!r}; allowed: {', '.join(SCHEDULERS)}")
    return name


def make_scheduler(name: str, base_config):
    """A fresh (stateful) scheduler for one batch, from the model's scheduler config."""
    import diffusers

    cls_name, overrides = SCHEDULERS[check_scheduler(name)]
    return getattr(diffusers, cls_name).from_config(base_config, **overrides)


def is_sigma_space(scheduler) -> bool:
    return any(cls.__name__ in _SIGMA_SPACE for cls in type(scheduler).__mro__)
