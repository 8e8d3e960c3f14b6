"""Prefect events of kquant: a store completed or failed, an image arrived.

* ``kquant.store.completed`` / ``kquant.store.failed``: the resource is the store
  (``kquant.store.<URI>``), the related resource with role ``source`` the image
  (``kquant.image.<URI>``); the payload carries PSNR, K, bits/px and the exports (the
  store, its preview) of a completed store, or the one-line reason of a failed one.
* ``kquant.image.arrived``: the resource is the image (``kquant.image.<URI>``); sent by
  ``kquant-notify URI`` (or by anything that posts the same event, such as an object-store
  notification through a webhook). The ``inbox`` deployment runs on it.

URIs are ``file:///...`` for local paths, else the object-store URL
(:func:`kquant.io.uri.display`), so a trigger can match a folder by prefix
(``kquant.store.file:///data/outbox/*``). ``deploy/prefect.yaml`` has the triggers.
"""

from __future__ import annotations

import argparse
import sys

from kquant.io import uri as kuri

STORE_COMPLETED = "kquant.store.completed"
STORE_FAILED = "kquant.store.failed"
IMAGE_ARRIVED = "kquant.image.arrived"


def store_resource(target: str) -> dict:
    uri = kuri.display(target)
    return {
        "prefect.resource.id": f"kquant.store.{uri}",
        "prefect.resource.name": kuri.name(target),
        "kquant.uri": uri,
    }


def image_resource(source: str, role: str | None = None) -> dict:
    uri = kuri.display(source)
    out = {
        "prefect.resource.id": f"kquant.image.{uri}",
        "prefect.resource.name": kuri.name(source),
        "kquant.uri": uri,
    }
    if role:
        out["prefect.resource.role"] = role
    return out


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


def image_arrived(uri: str) -> None:
    """``kquant.image.arrived`` for the image at ``uri``."""
    from prefect.events import emit_event

    emit_event(
        event=IMAGE_ARRIVED, resource=image_resource(uri), payload={"uri": kuri.display(uri)}
    )


def notify(argv: list[str] | None = None) -> int:
    """``kquant-notify URI...``: emit ``kquant.image.arrived`` for each image."""
    p = argparse.ArgumentParser(
        prog="kquant-notify",
        description="Tell Prefect that images arrived (event kquant.image.arrived; the inbox "
        "deployment runs on it). PREFECT_API_URL names the server.",
    )
    p.add_argument("uri", nargs="+", help="image path or URL (s3://...)")
    args = p.parse_args(argv)
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print("kquant-notify: error: PREFECT_API_URL is not set", file=sys.stderr)
        return 2
    try:
        for uri in args.uri:
            image_arrived(uri)
        EventsWorker.drain_all()
    except Exception as exc:
        print(f"kquant-notify: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    for uri in args.uri:
        print(f"{IMAGE_ARRIVED} {kuri.display(uri)}")
    return 0


def main() -> None:
    sys.exit(notify())


if __name__ == "__main__":
    main()
