"""Validation of experiment tables: each mistake is one line naming the key and what is allowed.

Produces plain values (styles as dicts, guidance as a Guidance); `experiment` builds its dataclasses from
them, so this module never imports it. Ranges come from `limits`, shared with the API and the CLI.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import BadInput
from .limits import check_cfg, check_seed, check_side, check_steps
from .recipe import Guidance, LossTerm, check_guidance
from .schedulers import SCHEDULERS

# key -> expected TOML type; order is the documentation order
TOML_KEYS: dict[str, type] = {
    "name": str, "model": str, "prompt": str, "negative_prompt": str, "steps": int, "guidance_scale": float,
    "width": int, "height": int, "scheduler": str, "styles": list, "guidance": dict,
    "refiner": str, "refiner_switch": float,
}
STYLE_KEYS: dict[str, type] = {"concept": str, "seed": int, "token": str}
GUIDANCE_KEYS: dict[str, type] = {"loss": object, "scale": float, "every": int, "decoder": str,
                                  "start": float, "end": float}
LOSS_KEYS: dict[str, type] = {"name": str, "scale": float}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", list: "an array of tables",
               dict: "a table"}


def _fail(where: str, message: str) -> BadInput:
    return BadInput(f"{where}: {message}")


def _check_keys(table: Any, allowed: dict[str, type], where: str, what: str) -> dict:
    if not isinstance(table, dict):
        raise _fail(where, f"{what} must be a table, got {table!r}")
    for key in table:
        if key not in allowed:
            prefix = "" if what == "top level" else what + "."
            raise _fail(where, f"unknown key '{prefix}{key}'; allowed: {', '.join(allowed)}")
    return table


def _typed(value: Any, kind: type, where: str, key: str) -> Any:
    """`value` if it has the TOML type `kind` (ints count as numbers; booleans never do)."""
    ok = (isinstance(value, kind) and not isinstance(value, bool)) if kind is not float else (
        isinstance(value, (int, float)) and not isinstance(value, bool))
    if not ok:
        raise _fail(where, f"{key} must be {_TYPE_NAMES[kind]}, got {value!r}")
    return float(value) if kind is float else value


def parse_table(data: dict, where: str) -> dict:
    """Top-level table -> Experiment keyword arguments (styles as a list of dicts, guidance as a Guidance)."""
    _check_keys(data, TOML_KEYS, where, "top level")
    out = {key: _typed(value, TOML_KEYS[key], where, key) for key, value in data.items()}
    for key in ("prompt", "styles"):
        if key not in out:
            raise _fail(where, f"missing required key {key!r}")
    checks = {"steps": check_steps, "guidance_scale": check_cfg, "width": check_side, "height": check_side}
    for key, check in checks.items():
        if key in out:
            _within(where, check, out[key], key)
    if "scheduler" in out and out["scheduler"] not in SCHEDULERS:
        raise _fail(where, f"unknown scheduler {out['scheduler']!r}; allowed: {', '.join(SCHEDULERS)}")
    if "refiner" in out and not out["refiner"].strip():
        raise _fail(where, "refiner is empty; give an SDXL refiner's hub id or folder, or leave the key out")
    if "refiner_switch" in out and not 0 < out["refiner_switch"] < 1:
        raise _fail(where, f"refiner_switch must be a number between 0 and 1 (exclusive), got {out['refiner_switch']!r}")
    if "refiner_switch" in out and "refiner" not in out:
        raise _fail(where, "refiner_switch needs refiner (an SDXL refiner's hub id or folder)")
    if not out["styles"]:
        raise _fail(where, "styles is empty; add at least one [[styles]] table with concept and seed")
    out["styles"] = [parse_style(s, where, i) for i, s in enumerate(out["styles"])]
    if "guidance" in out:
        out["guidance"] = parse_guidance(out["guidance"], where)
    return out


def _within(where: str, check, value: Any, key: str) -> Any:
    """Apply a `limits` check, its message prefixed with the file."""
    try:
        return check(value, key)
    except BadInput as err:
        raise _fail(where, str(err)) from None


def parse_style(table: Any, where: str, index: int) -> dict:
    """One [[styles]] table -> the keyword arguments of a Style (concept, seed, token)."""
    what = f"styles[{index}]"
    _check_keys(table, STYLE_KEYS, where, what)
    for key in ("concept", "seed"):
        if key not in table:
            raise _fail(where, f"{what} is missing required key {key!r} (each style needs concept and seed)")
    values = {k: _typed(v, STYLE_KEYS[k], where, f"{what}.{k}") for k, v in table.items()}
    if not values["concept"].strip():
        raise _fail(where, f"{what}.concept is empty; give a hub id, a file or a folder")
    _within(where, check_seed, values["seed"], f"{what}.seed")
    if "token" in values and not values["token"].strip():
        raise _fail(where, f"{what}.token is empty; leave it out to use the concept's own token")
    return values


def parse_guidance(table: Any, where: str) -> Guidance:
    """[guidance] -> Guidance; loss names are resolved now so a typo fails before any weights load."""
    from .decoders import check_decoder
    from .losses import check_loss

    _check_keys(table, GUIDANCE_KEYS, where, "guidance")
    if "loss" not in table:
        raise _fail(where, "guidance is missing required key 'loss' (a name, 'module:function', "
                    "or a list of {name, scale})")
    values = {k: _typed(v, GUIDANCE_KEYS[k], where, f"guidance.{k}")
              for k, v in table.items() if k != "loss"}
    terms = parse_losses(table["loss"], values.get("scale"), where)
    try:
        for term in terms:
            check_loss(term)  # cheap: names, arguments, imports; no loss model (CLIP) loads here
        decoder = check_decoder(values.get("decoder", "vae"))
        return check_guidance(Guidance(losses=terms, every=values.get("every", 1), start=values.get("start", 0.0),
                                       end=values.get("end", 1.0), decoder=decoder))
    except BadInput as err:
        raise _fail(where, f"guidance: {err}") from None


def parse_losses(spec: Any, scale: float | None, where: str) -> tuple[LossTerm, ...]:
    """`loss = "canny"`, `"canny:200"`, `"module:function"`, or a list of those or of {name, scale}.

    A term without its own scale takes [guidance] scale, else the loss's default scale.
    """
    from .losses import loss_default_scale, parse_loss_spec

    items = [spec] if isinstance(spec, str) else spec
    if not isinstance(items, list) or not items:
        raise _fail(where, f"guidance.loss must be a name, 'module:function', or a non-empty list of "
                    f"{{name, scale}} tables, got {spec!r}")
    terms = []
    for i, item in enumerate(items):
        what = f"guidance.loss[{i}]" if isinstance(spec, list) else "guidance.loss"
        if isinstance(item, str):
            if not item.strip():
                raise _fail(where, f"{what} is empty; give a loss name")
            try:
                terms.append(parse_loss_spec(item, default_scale=scale))
            except BadInput as err:
                raise _fail(where, f"{what}: {err}") from None
            continue
        _check_keys(item, LOSS_KEYS, where, what)
        if "name" not in item:
            raise _fail(where, f"{what} is missing required key 'name'")
        name = _typed(item["name"], str, where, f"{what}.name")
        default = scale if scale is not None else loss_default_scale(name)
        term_scale = _typed(item.get("scale", default), float, where, f"{what}.scale")
        if not math.isfinite(term_scale):
            raise _fail(where, f"{what}.scale must be a finite number, got {term_scale!r}")
        terms.append(LossTerm(name=name, scale=term_scale))
    return tuple(terms)
