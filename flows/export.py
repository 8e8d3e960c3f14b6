"""Flow ``export-store``: a complete kquant store as an indexed PNG (or a palette TIFF) that
other tools open, next to the store by default.

The follow-up of ``deploy/prefect.yaml``: its ``on-completed`` deployment runs on each
``kquant.store.completed`` event of a store in the outbox (see :mod:`flows.events`).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed

from flows import report
from kquant.errors import KquantError
from kquant.io import uri as kuri


def default_output(store: str, suffix: str = ".png") -> str:
    """``X.kquant`` -> ``X-indexed.png`` beside it."""
    target = kuri.normalise(store).rstrip("/")
    stem = target[: -len(".kquant")] if target.endswith(".kquant") else target
    return f"{stem}-indexed{suffix}"


@flow(name="export-store", validate_parameters=False)
def export_store(store: str, output: str | None = None, overwrite: bool = True) -> dict:
    """Write the store at ``store`` as an indexed PNG (``output`` ending ``.png``) or a
    palette TIFF (``.tif``); default ``<store stem>-indexed.png`` beside it.

    ``store`` may be the store's path or ``file://`` URI (as the event carries it). A bad
    or incomplete store ends the run Failed with the one-line reason.
    """
    logger = get_run_logger()
    try:
        import kquant.export

        store_path = kuri.normalise(store)
        out = output or default_output(store_path)
        written = kquant.export.export(store_path, out, overwrite=overwrite)
    except KquantError as exc:
        logger.error("export-store failed: %s", report.one_line(exc))
        return Failed(message=report.one_line(exc), data=exc)
    logger.info("exported %s to %s", store_path, written)
    try:
        create_markdown_artifact(
            markdown=f"Exported `{kuri.display(store_path)}` to `{kuri.display(str(written))}`\n",
            key=report.slug(kuri.name(store_path)) + "-export",
            description=f"export of {store_path}",
        )
    except Exception as exc:
        logger.warning("no artifact for the export: %s", report.one_line(exc))
    return {"store": store_path, "output": str(written)}
