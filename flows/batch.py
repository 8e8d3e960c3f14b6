"""Flow ``quantize-batch``: every image of a folder (or glob) into its own kquant store.

* one store per image: ``<outbox>/<relative path>.kquant`` (e.g. ``tile-07.png``
  -> ``tile-07.png.kquant``), plus ``<...>-preview.png``;
* images whose complete store was made from the same file (path, size, mtime,
  ETag) with the same parameters are skipped, so a rerun (and the scheduled
  ``inbox`` deployment) only processes newly arrived images; a complete store of
  another version of the image or of other parameters fails that image (untouched);
* an image that cannot be read (not an image, truncated, too many pixels) fails the run
  that meets it and is quarantined: ``<outbox>/<relative path>.quarantined.json`` records
  the file's size and mtime and the one-line reason, and later runs leave the image out
  (listed "in quarantine") until the file changes;
* files still being copied in are left for the next run: hidden and partial
  names (``.x``, ``*.part``, ``*.tmp``, ...) and files modified less than
  ``settle_seconds`` ago are not picked up;
* ``shared_palette=True`` fits one palette on the union of all the images
  (histograms merged, one sample drawn across them) and remaps each image onto
  it, so tiles of a mosaic keep identical colours; when earlier runs already
  wrote stores with a shared palette of the same parameters, new images reuse
  that palette;
* images fan out on threads of the flow-run process, their pixel work there, in worker
  processes, or as dask tasks on the cluster at ``$DASK_SCHEDULER_ADDRESS`` (or in a
  scheduler file); or through prefect-dask's ``DaskTaskRunner`` on a cluster made for the
  run from a cluster class (see :func:`task_runner`).

Tasks pass URIs, headers and palettes; never pixels.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.futures import as_completed, wait
from prefect.states import Failed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from flows import events, pixels, report, tasks
from flows import inbox as inbox_mod
from kquant import store
from kquant.errors import InputError, KquantError, ParameterError
from kquant.io import uri as kuri
from kquant.params import QuantizeParams


def task_runner() -> TaskRunner:
    """The flow's task runner, chosen from the environment of the flow-run process.

    ``$DASK_SCHEDULER_ADDRESS`` or ``$DASK_SCHEDULER_FILE`` (a scheduler file, as HPC batch
    scripts write with ``dask scheduler --scheduler-file``): the thread-pool runner, the
    images' pixel work sent to that cluster as plain dask tasks
    (:func:`flows.pixels.cluster_pool`): a Prefect task run on a dask worker costs ~0.1-0.3 s,
    five of them an image. ``$KQUANT_CLUSTER_CLASS`` (+
    ``$KQUANT_CLUSTER_KWARGS``, JSON): a ``DaskTaskRunner`` that makes that cluster for the
    run and closes it after (``dask_jobqueue.SLURMCluster``, the dask-kubernetes operator's
    ``KubeCluster``, ``distributed.LocalCluster``; see deploy/cluster/).
    ``$KQUANT_BATCH_PROCESSES=1``: a temporary local cluster of worker processes.
    Otherwise Prefect's ``ThreadPoolTaskRunner``, of which ``$KQUANT_BATCH_WORKERS``
    threads (default: CPU count, at most 4) do pixel work at once
    (:data:`flows.tasks.COMPUTE_SLOTS`): a task run costs ~6 ms there against ~100 ms
    through a ``DaskTaskRunner`` of in-process threads (bench/README.md, "Inbox
    throughput").
    """
    address = tasks.sanitise_scheduler_env()
    if address:  # compute slots follow the cluster's threads (see cluster_pool)
        return ThreadPoolTaskRunner(max_workers=CLUSTER_TASK_THREADS)
    spec = tasks.cluster_spec()
    if spec is not None:
        return DaskTaskRunner(cluster_class=spec[0], cluster_kwargs=spec[1])
    n = max(1, int(os.environ.get("KQUANT_BATCH_WORKERS") or min(4, os.cpu_count() or 1)))
    processes = os.environ.get("KQUANT_BATCH_PROCESSES", "0").strip().lower() in (
        "1",
        "true",
        "yes",
    )
    if not processes:  # threads that wait for an image's earlier steps hold no compute slot
        return ThreadPoolTaskRunner(max_workers=8 * n)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": n,
            "threads_per_worker": 1,
            "processes": True,
            "protocol": "tcp://",
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",
        }
    )


#: Threads of the batch's task runner on an existing cluster: they wait on dask tasks.
CLUSTER_TASK_THREADS = 64

#: Batches of at least this many new images on the thread-pool runner do their pixel work in
#: worker processes (``$KQUANT_BATCH_PROCESS_MIN``): starting them costs ~2 s.
PROCESS_MIN_IMAGES = 8


def _process_workers(n_images: int) -> int:
    """Worker processes for the pixel work of ``n_images``: :data:`flows.tasks.COMPUTE_SLOTS`
    on the thread-pool runner with enough images and more than one slot, else 0."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    minimum = int(os.environ.get("KQUANT_BATCH_PROCESS_MIN") or PROCESS_MIN_IMAGES)
    if ctx is None or not isinstance(ctx.task_runner, ThreadPoolTaskRunner):
        return 0
    if tasks.COMPUTE_SLOTS < 2 or n_images < minimum:
        return 0
    return tasks.COMPUTE_SLOTS


def _cluster_address() -> str | None:
    """The existing cluster the batch's pixel work goes to: ``$DASK_SCHEDULER_ADDRESS`` (or
    file) while the task runner is the thread pool, else None."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or not isinstance(ctx.task_runner, ThreadPoolTaskRunner):
        return None
    return tasks.sanitise_scheduler_env()


@contextlib.contextmanager
def _cluster_pool(address: str, logger):
    """:func:`flows.pixels.cluster_pool`, with as many compute slots as the cluster has
    threads, its size and dashboard in the log."""
    with pixels.cluster_pool(address) as client:
        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
        logger.info(
            "pixel work on the dask cluster at %s (%d threads)%s",
            address,
            threads,
            f", dashboard {tasks.client_dashboard(client)}"
            if tasks.client_dashboard(client)
            else "",
        )
        with tasks.compute_slots(max(1, threads)):
            yield


def _failure(futures) -> str | None:
    """The one-line reason of the first failed step of an image, or None."""
    return _failure_and_error(futures)[0]


def _failure_and_error(futures) -> tuple[str | None, BaseException | None]:
    """The one-line reason of the first failed step of an image and its exception (None
    when the step ended without one), or ``(None, None)``."""
    for f in futures:
        if f is None:
            continue
        state = f.state
        if state.is_failed() or state.is_crashed():
            try:
                f.result()
            except Exception as exc:  # the task's own exception
                return report.one_line(exc), exc
            return state.message or state.name, None
    for f in futures:
        if f is not None and not f.state.is_completed():
            return f"{f.state.name}: {f.state.message}", None
    return None, None


def _fail_all(todo: list, failed: dict, what: str, future, logger) -> list:
    """A palette every image needed has failed: each image fails with its reason (logged
    once). Returns the images left to do: none."""
    reason = _failure([future])
    logger.error("%s: %s", what, reason)
    for _, rel, _ in todo:
        failed[str(rel)] = f"{what}: {reason}"
    return []


# parameters are validated by kquant in the flow (as quantize-image)
@flow(name="quantize-batch", task_runner=task_runner(), validate_parameters=False)
def quantize_batch(
    inbox: str,
    outbox: str,
    pattern: str = "*",
    params: QuantizeParams | None = None,
    shared_palette: bool = False,
    preview: bool = True,
    settle_seconds: float = 10.0,
    max_pixels: int | None = None,
    palette: str | list | None = None,
) -> dict:
    """Quantize every image in ``inbox`` matching ``pattern`` into ``outbox``, skipping done ones.

    Parameters
    ----------
    inbox : str
        Folder of images (or ``file://`` URI); ``pattern`` is a glob inside it
        (``"**/*"`` recurses; the relative layout is kept in ``outbox``).
    outbox : str
        Folder of the stores (created if missing).
    params : QuantizeParams or dict, optional
        As for ``quantize-image``; with ``shared_palette`` the sample size is the total
        over all images, and ``target_psnr`` picks the K of the shared palette.
    shared_palette : bool
        One palette for all the images (identical colours across tiles).
    preview : bool
        Write a preview picture next to each store.
    settle_seconds : float
        Ignore files modified less than this long ago (still arriving).
    max_pixels : int, optional
        Refuse images whose header claims more pixels.
    palette : str or list, optional
        Map every image onto this palette (as for ``quantize-image``) instead of
        fitting one; ``shared_palette`` is then moot.

    Returns
    -------
    dict
        ``processed``, ``skipped``, ``failed`` (name -> reason), ``quarantined`` (name ->
        reason: images left out as unreadable and unchanged) and per-image results.

    The run ends Failed if any image failed (each reason is logged on one line, no
    traceback); the other images are still processed. Once the stores are written, an
    unreachable Prefect API is waited for before the artifacts are made (as in
    ``quantize-image``).
    """
    logger = get_run_logger()
    t0 = time.perf_counter()
    try:
        tasks.sanitise_scheduler_env()
        params = QuantizeParams.coerce(params).to_json()  # tasks pass JSON
        if params["export"] not in (None, "cog"):
            raise ParameterError(
                f"a batch exports each store next to it: export must be cog, "
                f"got {params['export']!r}"
            )
        images = inbox_mod.list_images(inbox, pattern, settle_seconds, logger)
        if "{{" in str(outbox):
            raise InputError(
                f"outbox is not set ({outbox}): set KQUANT_OUTBOX when deploying, "
                "or pass --param outbox=FOLDER"
            )
        out_root = kuri.normalise(outbox)
        if out_root.rstrip("/") == kuri.normalise(inbox).rstrip("/"):
            raise InputError(
                f"outbox and inbox are the same folder ({out_root}): the "
                "previews written there would be picked up as new images"
            )
        # an outbox inside the inbox: its files are outputs, not arrivals
        images = [(u, r) for u, r in images if not u.startswith(out_root.rstrip("/") + "/")]
        if not kuri.is_remote(out_root):
            Path(out_root).mkdir(parents=True, exist_ok=True)
    except KquantError as exc:
        # a user error: one line in the log, the run Failed with it (no traceback)
        logger.error("quantize-batch failed: %s", report.one_line(exc))
        return Failed(message=report.one_line(exc), data=exc)

    dashboard = tasks.runner_dashboard_link()
    if dashboard is None and _cluster_address():  # the cluster the pixel work goes to
        dashboard = tasks.dashboard_link(None)
    made = tasks.runner_cluster()
    if made:
        logger.info("dask cluster of this run: %s", made)
    if dashboard:
        logger.info("dask dashboard: %s", dashboard)

    # an imposed palette first: the stores made with it record its parameters
    shared_fit = imposed = palette_failure = None
    if palette is not None and images:
        loaded = tasks.load_palette.submit(palette, params)
        loaded.wait()
        if loaded.state.is_completed():
            imposed = dict(loaded.result())
            params = imposed.pop("params")
            shared_fit = {"palette": imposed["palette"], "imposed": True}
        else:
            palette_failure = loaded

    todo, skipped, failed, done_targets, held = [], [], {}, [], {}
    unreadable = {}  # images whose read failed: quarantined at the end (name -> source)
    for path, rel in images:
        reason = inbox_mod.quarantined(out_root, path, rel)
        if reason is not None:  # failed before and unchanged since: left out
            held[rel] = reason
            continue
        target = inbox_mod.target_of(out_root, rel)
        status = store.status(target)
        if status == "complete":  # (with a palette that fails to load: cannot tell)
            blocker = (
                None if palette_failure else inbox_mod.not_done_here(target, path, params, imposed)
            )
            if blocker:
                failed[rel] = blocker
            else:
                skipped.append(rel)
                done_targets.append(target)
        elif status == "other":
            failed[rel] = f"{target} exists and is not a complete kquant store; remove it"
        else:
            if not kuri.is_remote(target):
                Path(target).parent.mkdir(parents=True, exist_ok=True)
            todo.append((path, rel, target))
    logger.info(
        "%d images in %s: %d new, %d already done (skipped)%s%s",
        len(images),
        kuri.normalise(inbox),
        len(todo),
        len(skipped),
        f", {len(failed)} blocked" if failed else "",
        f", {len(held)} in quarantine" if held else "",
    )
    for rel in sorted(held):
        logger.info(
            "%s: in quarantine (unreadable, unchanged since: %s); replace the file to retry, "
            "or remove %s",
            rel,
            held[rel],
            kuri.display(inbox_mod.quarantine_path(out_root, rel)),
        )
    for rel in sorted(failed):
        logger.error("%s: %s", rel, failed[rel])

    # one palette for everyone, if asked
    if palette_failure is not None and todo:
        todo = _fail_all(todo, failed, "palette", palette_failure, logger)
    elif shared_palette and imposed is None and todo:
        reused = inbox_mod.existing_shared_palette(done_targets, params) if done_targets else None
        if reused is not None:
            logger.info("reusing the shared palette of %d existing stores", len(done_targets))
            shared_fit = {
                "palette": reused[0],
                "nodata_index": reused[1],
                "reused": True,
                "n_unique": None,
                "mse": None,
                "seconds": 0.0,
            }
        else:
            if done_targets:
                logger.warning(
                    "existing stores do not share one palette made with these "
                    "parameters; new stores get a newly fitted palette"
                )
            # fitted on every image of the inbox (done ones too: the palette of the whole
            # mosaic), except those whose header cannot be read
            infos = [tasks.inspect_source.submit(str(p), max_pixels) for p, _ in images]
            wait(infos)
            good = []
            for (path, rel), f in zip(images, infos):
                if f.state.is_completed():
                    good.append(f.result())
                else:
                    failed[str(rel)], exc = _failure_and_error([f])
                    if isinstance(exc, InputError):
                        unreadable[str(rel)] = path
                    logger.error("%s: %s", rel, failed[str(rel)])
            todo = [t for t in todo if str(t[1]) not in failed]
            if good and todo:
                fit_f = tasks.fit_shared_palette.submit(good, params, max_pixels)
                fit_f.wait()
                if fit_f.state.is_completed():
                    shared_fit = dict(
                        fit_f.result(), reused=False, cached=fit_f.state.name == "Cached"
                    )
                else:
                    todo = _fail_all(todo, failed, "shared palette", fit_f, logger)

    # fan out: one chain of tasks per new image (pixel work on the cluster at
    # $DASK_SCHEDULER_ADDRESS, or in worker processes when many)
    address = _cluster_address()
    workers = 0 if address else _process_workers(len(todo))
    if workers:
        logger.info("pixel work in %d worker processes", workers)
    if address and todo:
        pool = _cluster_pool(address, logger)
    elif workers:
        pool = pixels.pool(workers)
    else:
        pool = contextlib.nullcontext()
    with pool:
        chains = []
        for path, rel, target in todo:
            info = tasks.inspect_source.submit(str(path), max_pixels)
            reserved = None
            if imposed is not None:  # the fit-like record: the stores say "imposed"
                fit, pal = None, imposed
            elif shared_fit is not None:
                fit, pal = None, shared_fit["palette"]
                reserved = shared_fit.get("nodata_index")
            else:  # the write and preview tasks take the fit's result (a dict) as the palette
                fit = pal = tasks.fit_palette.submit(info, params, max_pixels)
            # write, verify and preview in one task run (a run costs ~90 ms of CPU)
            stored = tasks.store_image.submit(
                info,
                str(target),
                pal,
                params,
                max_pixels,
                str(inbox_mod.preview_path(target)) if preview else None,
                report.BATCH_THUMB_WIDTH,
                nodata_index=reserved,
            )
            exported = None  # a task run costs CPU here and on the server: only when asked
            if params.get("export"):
                exported = tasks.export_cog.submit(str(target), params, False, wait_for=[stored])
            chains.append((rel, target, [info, fit, stored, exported], path))
        if chains:  # the images done so far, as their last steps end
            progress = tasks.ProgressArtifact(
                report.batch_key(out_root) + "-progress", f"batch {out_root}", "images done"
            )
            progress(0, len(chains))
            finals = [fs[3] if fs[3] is not None else fs[2] for _, _, fs, _ in chains]
            for done, _ in enumerate(as_completed(finals), 1):
                progress(done, len(chains))
        wait([f for _, _, fs, _ in chains for f in fs if f is not None])

    results = []
    attempted = [(str(rel), str(path), str(target)) for rel, target, _, path in chains]
    for rel, target, futures, path in chains:
        reason, exc = _failure_and_error(futures)
        if reason is not None:
            failed[str(rel)] = reason
            if isinstance(exc, InputError):
                unreadable[str(rel)] = path
            logger.error("%s: %s", rel, reason)
            continue
        inbox_mod.release(out_root, str(rel))  # an earlier version may have been held
        stored = futures[2].result()
        meta, shown = stored["meta"], stored["preview"]
        m = meta["metrics"]
        fit_state = futures[1].state if futures[1] is not None else None
        results.append(
            {
                "image": str(rel),
                "source": str(path),
                "store": str(target),
                "psnr": m["psnr"],
                "bits_per_pixel": round(m["store_bits_per_pixel"], 4),
                "n_colors": meta["n_colors"],
                "export": (futures[3].result() or {}).get("path") if futures[3] else None,
                "fit": (
                    "imposed"
                    if imposed is not None
                    else "shared"
                    if fit_state is None
                    else "cached"
                    if fit_state.name == "Cached"
                    else "fitted"
                ),
                "preview": shown["path"] if shown else None,
                "thumbnail": shown["thumbnail"] if shown else None,
            }
        )
    for rel, path in sorted(unreadable.items()):  # later runs leave them out until changed
        try:
            where = inbox_mod.quarantine(out_root, path, rel, failed[rel])
            logger.warning(
                "%s: quarantined (%s); later runs leave it out until the file changes",
                rel,
                kuri.display(where),
            )
        except Exception as exc:
            logger.warning("%s: not quarantined: %s", rel, report.one_line(exc))
    for r in results:
        events.store_completed(
            {
                "target": r["store"],
                "source": r["source"],
                "psnr": r["psnr"],
                "n_colors": r["n_colors"],
                "store_bits_per_pixel": r["bits_per_pixel"],
                "preview": r["preview"],
            },
            logger,
        )
    for rel, path, target in attempted:
        if rel in failed:
            events.store_failed(path, target, failed[rel], logger)
    seconds = time.perf_counter() - t0
    out = {
        "inbox": kuri.normalise(inbox),
        "outbox": out_root,
        "processed": [r["image"] for r in results],
        "skipped": skipped,
        "failed": failed,
        "quarantined": held,
        "results": results,
        "shared_palette": shared_fit["palette"] if shared_fit else None,
        "seconds": round(seconds, 3),
        "dashboard": dashboard,
    }
    report.publish(
        lambda: report.batch_artifacts(out, shared_fit),
        logger,
        f"the batch {out_root}",
        f"{len(results)} stores are written and verified",
    )
    for r in results:  # shown in the artifacts; the run's result stays small
        r.pop("thumbnail", None)
    logger.info(
        "processed %d, skipped %d, failed %d in %.2f s",
        len(results),
        len(skipped),
        len(failed),
        seconds,
    )
    if failed:  # each reason is logged above, on its own line
        exc = KquantError(
            f"{len(failed)} of {len(images)} images failed: "
            + "; ".join(f"{k}: {v}" for k, v in sorted(failed.items()))
        )
        logger.error("quantize-batch failed: %s", report.one_line(exc))
        return Failed(message=report.one_line(exc), data=exc)
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(quantize_batch(sys.argv[1], sys.argv[2]), indent=2))
