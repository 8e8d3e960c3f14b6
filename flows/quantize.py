"""Flow ``quantize-image``: one image into one kquant store, with artifacts.

Steps (each a Prefect task over the library, see :mod:`flows.tasks`):
inspect the source -> fit the palette (cached on the source's identity and the
fit parameters) -> assign and write the store -> verify it -> preview picture
-> report (markdown, palette table, preview image artifacts).

Run in-process (Prefect's ephemeral API, no server to start first)::

    python -m flows.quantize --demo                 # the bundled sample
    python -m flows.quantize SRC DST -k 16 [--seed N] [--overwrite]   # kquant quantize's options

or as the ``quantize-image/adhoc`` deployment (see ``deploy/prefect.yaml``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

from prefect import flow, get_run_logger
from prefect.states import Failed

from flows import events, report, tasks
from flows.inbox import preview_path
from kquant import pipeline, store
from kquant.errors import KquantError, TargetExistsError
from kquant.io import uri as kuri
from kquant.params import QuantizeParams, add_arguments


# parameters are validated by kquant in the flow (one-line errors, the run Failed with them);
# Prefect still builds its form from the typed signature
@flow(name="quantize-image", log_prints=True, validate_parameters=False)
def quantize_image(
    source: str,
    target: str,
    params: QuantizeParams | None = None,
    overwrite: bool = False,
    preview: bool = True,
    address: str | None = None,
    max_pixels: int | None = None,
    palette: str | list | None = None,
) -> dict:
    """Quantize ``source`` (image file or zarr array) into a kquant store at ``target``.

    Parameters
    ----------
    source, target : str
        Image path or URL (``file://``, ``s3://``) and store path or URL; the store is
        refused if it exists, unless ``overwrite``.
    params : QuantizeParams or dict, optional
        K, seed, sample size, chunking, fit mode, colour space, dithering, target PSNR, ...
        (each field says what it does: :class:`kquant.params.QuantizeParams`; on the
        command line, ``--param params='{"k": 8}'``).
    overwrite : bool
        Replace an existing store (only a kquant store: see ``kquant.store.check_target``).
    preview : bool
        Also write ``<target stem>-preview.png`` next to the store and show it
        as an image artifact.
    address : str, optional
        Dask scheduler address; default ``$DASK_SCHEDULER_ADDRESS`` (set through
        the deployment's job variables), else local threads.
    max_pixels : int, optional
        Refuse images whose header claims more pixels.
    palette : str or list, optional
        Map onto this palette instead of fitting one: a palette file or kquant store
        (path or URI: GIMP ``.gpl``, ``.npy``, hex/RGB text, an image) or a list of
        ``[r, g, b]``; ``k`` and ``target_psnr`` are then ignored.

    Returns
    -------
    dict
        Store path, PSNR, MSE, bits/px, palette (hex), timings, whether the fit
        came from the cache, and ``already_done``: true when ``target`` already held
        this run's result (the complete store of an earlier run with the same source,
        i.e. the same file by URI, size, mtime and ETag, and the same parameters), then
        read from the store and not rewritten.

    A bad input, bad parameters or an existing target of another source or other
    parameters end the run Failed with the one-line reason in its log (no traceback);
    no store is left at ``target`` then. Once the store is complete, an unreachable
    Prefect API is waited for (:func:`flows.report.wait_for_api`) before the artifacts
    are made, and failing to make them is only a warning.
    """
    logger = get_run_logger()
    t0 = time.perf_counter()
    run_cluster = contextlib.ExitStack()
    try:
        tasks.sanitise_scheduler_env()
        address = tasks.clean_address(address)
        params = QuantizeParams.coerce(params)
        target = kuri.normalise(target)
        if not overwrite and store.status(target) == "complete":
            # this run's own store (an earlier run completed it): nothing to do
            imposed = tasks.load_palette(palette, params.to_json()) if palette is not None else None
            done = pipeline.finished_store(
                target,
                source,
                QuantizeParams.from_json(imposed["params"]) if imposed else params,
                palette=imposed["palette"] if imposed else None,
            )
            if done is not None:
                return _already_done(done, target, t0, logger)
            raise TargetExistsError(
                f"{target} exists, made from another source, another "
                "version of it or other parameters (run with "
                "overwrite=true to replace it)"
            )
        try:  # fail before any work: an existing target, a missing folder
            store.check_target(target, overwrite=overwrite)
        except TargetExistsError:
            raise TargetExistsError(
                f"{target} exists (run with overwrite=true to replace it)"
            ) from None
        exported = pipeline.export_path(target, params)
        if exported is not None:  # the COG's target too
            pipeline.check_export(exported, overwrite=overwrite, source=source, target=target)
        timings = {}
        src = tasks.inspect_source(source, max_pixels)
        timings["inspect"] = time.perf_counter() - t0
        # a cluster class set and a huge image: a cluster for this run (closed at the end)
        address = run_cluster.enter_context(
            tasks.cluster_for_run(src["height"] * src["width"], address, logger)
        )
        dashboard = tasks.dashboard_link(address)
        if dashboard:
            logger.info("dask dashboard: %s", dashboard)

        params = params.to_json()  # tasks pass JSON
        if palette is not None:  # imposed: no fit, k is the palette's size
            fit = dict(tasks.load_palette(palette, params))
            params = fit.pop("params")
            fit_cached = False
        else:
            fit_state = tasks.fit_palette(src, params, max_pixels, address, return_state=True)
            fit = fit_state.result()
            fit_cached = fit_state.name == "Cached"
        timings["fit"] = fit["seconds"] if not fit_cached else 0.0
        if fit_cached:
            logger.info(
                "palette taken from the cache (same source identity, k, seed, sample "
                "size): no refit"
            )

        written = tasks.write_store(
            src,
            target,
            fit,
            params,
            overwrite,
            max_pixels,
            address,
            progress_key=report.slug(kuri.name(target)) + "-progress",
        )
        timings["assign_write"] = written["seconds"]
        verified = tasks.verify_store(target, address)
        timings["verify"] = verified["seconds"]
        exported = tasks.export_cog(target, params, overwrite) if params.get("export") else None
        if exported is not None:
            timings["export"] = exported["seconds"]
        run_cluster.close()
    except KquantError as exc:
        run_cluster.close()
        # a user error: one line in the log, the run Failed with it (no traceback)
        logger.error("quantize-image failed: %s", report.one_line(exc))
        events.store_failed(source, target, report.one_line(exc), logger)
        return Failed(message=report.one_line(exc), data=exc)
    shown = None
    if preview:
        try:
            shown = tasks.write_preview(
                src,
                fit["palette"],
                preview_path(target),
                params,
                max_pixels,
                nodata_index=fit.get("nodata_index"),
            )
            timings["preview"] = shown["seconds"]
        except Exception as exc:  # the store is complete and verified; a preview is extra
            logger.warning("no preview: %s", report.one_line(exc))
    timings["total"] = time.perf_counter() - t0
    result = report.summary(
        src, target, fit, fit_cached, written, verified, shown, timings, exported
    )
    result["dashboard"] = dashboard
    if fit_cached:
        result["timings"]["fit_original"] = fit["seconds"]
    _report(result, logger)
    events.store_completed(result, logger)
    psnr = "inf" if result["psnr"] is None else f"{result['psnr']:.2f} dB"
    logger.info(
        "done: %s, PSNR %s, %.3f bits/px, %.2f s",
        result["target"],
        psnr,
        result["store_bits_per_pixel"],
        timings["total"],
    )
    return result


def _report(result: dict, logger) -> None:
    """The run's artifacts, once the Prefect API answers (a failure is a warning)."""
    report.publish(
        lambda: report.report(result, report.slug(kuri.name(result["target"]))),
        logger,
        result["target"],
        f"the store {result['target']} is complete and verified",
    )


def _already_done(st, target: str, t0: float, logger) -> dict:
    result = report.stored_summary(st, target, time.perf_counter() - t0)
    logger.info(
        "already done: %s is the complete store of %s with these parameters "
        "(checksum %s); nothing rewritten",
        result["target"],
        result["source"],
        result["checksum"],
    )
    _report(result, logger)
    return result


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flows.quantize",
        description="Run the quantize-image Prefect flow in-process (ephemeral Prefect API; "
        "set PREFECT_API_URL to report to a server instead).",
    )
    p.add_argument("source", nargs="?", help="image file or zarr array")
    p.add_argument("target", nargs="?", help="store to write")
    p.add_argument(
        "--demo", action="store_true", help="quantize the bundled sample into --out (overwriting)"
    )
    p.add_argument("--out", default="kquant-demo", help="folder of the --demo store and preview")
    add_arguments(p)  # the parameters of `kquant quantize`, from the same model
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-preview", dest="preview", action="store_false")
    p.add_argument("--address", default=None, help="dask scheduler address")
    p.add_argument("--max-pixels", type=int, default=None)
    p.add_argument(
        "--palette",
        default=None,
        metavar="FILE|STORE",
        help="map onto this palette instead of fitting one",
    )
    return p


def _client_retries():
    """:data:`flows.report.CLIENT_MAX_RETRIES` retries of each Prefect API request, unless
    ``PREFECT_CLIENT_MAX_RETRIES`` is set (a context manager)."""
    import contextlib
    import os

    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    if os.environ.get("PREFECT_CLIENT_MAX_RETRIES"):
        return contextlib.nullcontext()
    return temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: report.CLIENT_MAX_RETRIES})


def main(argv: list[str] | None = None) -> int:
    import os

    # the ephemeral API server is a subprocess that reads this when it starts; with
    # telemetry on, a fresh PREFECT_HOME logs a spurious "database is locked" error
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = _parser().parse_args(argv)
    overwrite = args.overwrite
    if args.demo:
        from importlib import resources
        from pathlib import Path

        out = Path(args.out).absolute()
        out.mkdir(parents=True, exist_ok=True)
        source = str(resources.files("kquant") / "data" / "sample.jpg")
        target, overwrite = str(out / "sample.kquant"), True
    elif args.source and args.target:
        source, target = args.source, args.target
    else:
        _parser().error("give SOURCE and TARGET, or --demo")
    try:
        params = QuantizeParams.from_args(args)
    except KquantError as exc:
        print(f"quantize-image: error: {exc}", file=sys.stderr)
        return 2
    try:
        with _client_retries():
            state = quantize_image(
                source=source,
                target=target,
                params=params,
                overwrite=overwrite,
                preview=args.preview,
                address=args.address,
                max_pixels=args.max_pixels,
                palette=args.palette,
                return_state=True,
            )
    except Exception as exc:  # Prefect could not start the run or record its state
        from prefect.settings import PREFECT_API_URL

        url = PREFECT_API_URL.value()
        print(
            f"quantize-image: error: the Prefect API {f'at {url}' if url else '(ephemeral)'} "
            f"failed ({type(exc).__name__}: {report.one_line(exc)}); the run's state was "
            "not recorded",
            file=sys.stderr,
        )
        return 1
    if not state.is_completed():
        print(f"quantize-image: error: {state.message}", file=sys.stderr)
        return 1
    r = state.result()
    psnr = "inf (lossless)" if r["psnr"] is None else f"{r['psnr']:.2f} dB"
    colours = "" if r["n_unique"] is None else f", {r['n_unique']} colours"
    how = (
        "already done (complete store of this source and these parameters; not rewritten)"
        if r["already_done"]
        else "imposed"
        if r["n_unique"] is None
        else "cached"
        if r["fit_cached"]
        else "fitted"
    )
    print(
        f"store      {r['target']}\n"
        f"image      {r['height']} x {r['width']} px{colours}\n"
        f"palette    {r['n_colors']} colours ({r['bits']} bits/px)\n"
        f"quality    PSNR {psnr}, MSE {r['mse']:.3f}\n"
        f"size       {r['store_bytes']} bytes, {r['store_bits_per_pixel']:.3f} bits/px\n"
        f"fit        {how}\n"
        f"time       {r['timings']['total']:.2f} s (flow steps)"
        + (f"\npreview    {r['preview']}" if r["preview"] else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
