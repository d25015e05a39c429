"""Long jobs for the app: run a render in a worker thread, stream its steps, stop it within a step.

Gradio's `cancels=` does not stop a function that is already running, so Stop sets a per-session
`threading.Event` that the render's step callback checks after every scheduler step (A1111 and Fooocus
stop the same way). The event handler of the page is a generator that relays the worker's steps.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from PIL import Image

PREVIEW_EVERY_S = 0.25   # at most this often an x0 preview is decoded and sent to the page


class Stopped(Exception):
    """Raised from the step callback when the user pressed Stop."""


class StopSwitch:
    """One stop flag per browser session (Stop in one tab must not stop another user's job)."""

    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def flag(self, session: str) -> threading.Event:
        """The flag of `session` (created on first use)."""
        with self._lock:
            return self._flags.setdefault(session, threading.Event())

    def begin(self, session: str) -> threading.Event:
        """A cleared flag for a new job of `session`."""
        flag = self.flag(session)
        flag.clear()
        return flag

    def stop(self, session: str) -> None:
        """Ask the job of `session` to stop after its current step."""
        self.flag(session).set()


@dataclass
class Step:
    """Progress of the job in flight."""

    i: int                          # 0-based step index
    preview: Image.Image | None     # x0 decoded cheaply, when asked for


def step_callback(stop: threading.Event, out: "queue.Queue", preview: Callable | None = None) -> Callable[[dict], None]:
    """The callback for `render`: raises Stopped when asked to, reports each step (and a throttled preview)."""
    last = [0.0]

    def callback(info: dict) -> None:
        if stop.is_set():
            raise Stopped()
        image = None
        now = time.monotonic()
        if preview is not None and info.get("x0") is not None and now - last[0] >= PREVIEW_EVERY_S:
            last[0] = now
            image = preview(info["x0"])
        out.put(("step", Step(int(info["i"]), image)))

    return callback


def stream(work: Callable[[Callable[[dict], None]], Any], stop: threading.Event,
           preview: Callable | None = None, poll_s: float = 0.1) -> Iterator[tuple[str, Any]]:
    """Run `work(callback)` in a thread; yield ('step', Step) as it goes, then ('done', value) or ('stopped', None).

    When Stop is pressed during a step that takes longer than `poll_s`, ('stopping', None) comes first. The
    page learns of the stop only through this stream: the Stop button's own reply travels on another
    connection and could arrive after "Stopped", leaving a stale "Stopping…" on the page.
    An exception of `work` other than Stopped is raised here. If the consumer goes away (the page closed,
    the event was cancelled) the job is stopped too, so the model is free for the next one.
    """
    events: queue.Queue = queue.Queue()
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = work(step_callback(stop, events, preview))
        except BaseException as err:  # handed to the consumer thread
            result["error"] = err
        finally:
            events.put(("end", None))

    worker = threading.Thread(target=run, name="sd-styles-job", daemon=True)
    worker.start()
    announced = False
    try:
        while True:
            try:
                kind, value = events.get(timeout=poll_s)
            except queue.Empty:
                if stop.is_set() and not announced and worker.is_alive():
                    announced = True
                    yield "stopping", None
                continue
            if kind == "end":
                break
            latest = value
            while True:  # skip to the newest step (keeping the newest preview): the page needs no backlog
                try:
                    kind, value = events.get_nowait()
                except queue.Empty:
                    break
                if kind == "end":
                    events.put((kind, value))
                    break
                latest = Step(value.i, value.preview if value.preview is not None else latest.preview)
            yield "step", latest
    finally:
        if worker.is_alive():
            stop.set()
        worker.join()
    error = result.get("error")
    if isinstance(error, Stopped):
        yield "stopped", None
    elif error is not None:
        raise error
    else:
        yield "done", result.get("value")


def linear_preview(model) -> Callable:
    """x0 (scaled latents) -> a small RGB image through the 4x3 latent-to-RGB map (nearly free)."""
    import numpy as np
    import torch

    from .decoders import make_decoder

    decode = make_decoder(model, "linear")

    def preview(x0) -> Image.Image:
        with torch.no_grad():
            rgb = decode(x0[:1].float())[0]  # (3, h, w) in [0, 1]
        return Image.fromarray((rgb.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))

    return preview
