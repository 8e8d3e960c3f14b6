"""kquant's events as Prefect's events API takes them, without Prefect.

* ``kquant.store.completed`` / ``kquant.store.failed``: the resource is the store
  (``kquant.store.<URI>``), the related resource with role ``source`` the image
  (``kquant.image.<URI>``).
* ``kquant.image.arrived``: the resource is the image (``kquant.image.<URI>``);
  ``kquant notify URI...`` posts it (:func:`post`), as an object-store notification
  relayed to ``POST $PREFECT_API_URL/events`` can. The ``inbox`` deployment runs on it.

URIs are ``file:///...`` for local paths, else the object-store URL
(:func:`kquant.io.uri.display`), so a trigger can match a folder by prefix
(``kquant.store.file:///data/outbox/*``). The flows emit these through Prefect
(``flows/events.py``); ``deploy/prefect.yaml`` has the triggers.
"""

from __future__ import annotations

import datetime
import json
import os
import urllib.error
import urllib.request
import uuid

from kquant.errors import KquantError
from kquant.io import uri as kuri

STORE_COMPLETED = "kquant.store.completed"
STORE_FAILED = "kquant.store.failed"
IMAGE_ARRIVED = "kquant.image.arrived"


def store_resource(target: str) -> dict:
    """The Prefect resource of a store."""
    uri = kuri.display(target)
    return {
        "prefect.resource.id": f"kquant.store.{uri}",
        "prefect.resource.name": kuri.name(target),
        "kquant.uri": uri,
    }


def image_resource(source: str, role: str | None = None) -> dict:
    """The Prefect resource of an image (a related resource with ``role``)."""
    uri = kuri.display(source)
    out = {
        "prefect.resource.id": f"kquant.image.{uri}",
        "prefect.resource.name": kuri.name(source),
        "kquant.uri": uri,
    }
    if role:
        out["prefect.resource.role"] = role
    return out


def image_arrived(uri: str) -> dict:
    """The ``kquant.image.arrived`` event of the image at ``uri``, as Prefect's events API
    takes it (a new ``id``, ``occurred`` now)."""
    return {
        "id": str(uuid.uuid4()),
        "occurred": datetime.datetime.now(datetime.UTC).isoformat(),
        "event": IMAGE_ARRIVED,
        "resource": image_resource(uri),
        "related": [],
        "payload": {"uri": kuri.display(uri)},
    }


def post(events: list[dict], *, api_url: str | None = None, timeout: float = 30.0) -> None:
    """Post events to a Prefect API (``POST {api_url}/events``).

    Parameters
    ----------
    events : list of dict
        Events as :func:`image_arrived` makes them.
    api_url : str, optional, keyword-only
        The API's URL (``http://127.0.0.1:4200/api``); default ``$PREFECT_API_URL``.
        ``$PREFECT_API_KEY``, when set, is sent as the bearer token (Prefect Cloud).
    timeout : float, keyword-only
        Seconds to wait for the server.

    Raises
    ------
    KquantError
        If no API URL is known, or the server cannot be reached or refuses the events.
    """
    url = api_url or os.environ.get("PREFECT_API_URL")
    if not url:
        raise KquantError("no Prefect API to notify: set PREFECT_API_URL or pass --api-url")
    headers = {"Content-Type": "application/json"}
    if os.environ.get("PREFECT_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['PREFECT_API_KEY']}"
    request = urllib.request.Request(
        url.rstrip("/") + "/events",
        data=json.dumps(events).encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        detail = " ".join(exc.read().decode(errors="replace").split())[:200]
        detail = f": {detail}" if detail else ""
        raise KquantError(
            f"Prefect API {url} refused the events: HTTP {exc.code}{detail}"
        ) from None
    except (OSError, ValueError) as exc:
        why = getattr(exc, "reason", None) or exc
        raise KquantError(f"cannot reach the Prefect API {url}: {why}") from None
