"""kquant's events emitted through Prefect (their names and resources: :mod:`kquant.events`).

The flows emit ``kquant.store.completed`` (payload: PSNR, K, bits/px and the exports: the
store, its preview) and ``kquant.store.failed`` (the one-line reason). ``kquant.image.arrived``
is posted by ``kquant notify URI...`` (no Prefect needed) or by anything that posts the same
event; the ``inbox`` deployment runs on it. ``deploy/prefect.yaml`` has the triggers.
"""

from __future__ import annotations

from kquant.events import (
    IMAGE_ARRIVED,
    STORE_COMPLETED,
    STORE_FAILED,
    image_resource,
    store_resource,
)
from kquant.io import uri as kuri

__all__ = ["IMAGE_ARRIVED", "STORE_COMPLETED", "STORE_FAILED", "store_completed", "store_failed"]


def _emit(event: str, resource: dict, related: list | None = None, payload=None, logger=None):
    """Emit an event; a failure to emit is a warning (the work is done regardless)."""
    from prefect.events import emit_event

    try:
        emit_event(event=event, resource=resource, related=related or [], payload=payload)
    except Exception as exc:
        if logger is not None:
            logger.warning("event %s not emitted: %s", event, " ".join(str(exc).split()))


def store_completed(result: dict, logger=None) -> None:
    """``kquant.store.completed`` for a flow's result (see :func:`flows.report.summary`)."""
    exports = {"store": kuri.display(result["target"])}
    if result.get("preview"):
        exports["preview"] = kuri.display(result["preview"])
    if result.get("export"):
        exports["cog"] = kuri.display(result["export"])
    _emit(
        STORE_COMPLETED,
        store_resource(result["target"]),
        [image_resource(result["source"], "source")],
        {
            "store": kuri.display(result["target"]),
            "source": kuri.display(result["source"]),
            "psnr": result["psnr"],
            "k": result["n_colors"],
            "bits_per_pixel": result["store_bits_per_pixel"],
            "exports": exports,
        },
        logger,
    )


def store_failed(source: str, target: str, reason: str, logger=None) -> None:
    """``kquant.store.failed``: no store at ``target`` from ``source``, and why (one line)."""
    _emit(
        STORE_FAILED,
        store_resource(target),
        [image_resource(source, "source")],
        {"store": kuri.display(target), "source": kuri.display(source), "reason": reason},
        logger,
    )
