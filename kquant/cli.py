"""The ``kquant`` command line: quantize, decode, export, info, upgrade, demo.

Every failure meant for a user ends with one line on stderr,
``kquant: error: <reason>``, and a non-zero exit status (2 for bad input or
parameters, 3 for an incomplete store, 130 on Ctrl-C). Output cut short by its reader
(``kquant info S | head -2``) ends quietly with 141.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path

from kquant.errors import IncompleteStoreError, KquantError, ParameterError, reason
from kquant.label.metrics import format_bytes

EXIT_INCOMPLETE = 3
#: Status when stdout's reader has gone (``kquant info S | head -2``): 128 + SIGPIPE, what
#: a shell reports for ``cat`` or ``grep`` cut short the same way, so ``pipefail`` sees it.
EXIT_BROKEN_PIPE = 141


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other error
        self.exit(2, f"kquant: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _window(text: str) -> tuple[int, int, int, int]:
    try:
        rows, cols = text.split(",")
        y0, y1 = (int(v) for v in rows.split(":"))
        x0, x1 = (int(v) for v in cols.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"window must look like y0:y1,x0:x1, got {text!r}"
        ) from None
    return y0, y1, x0, x1


def _colour(text: str) -> tuple[int, int, int]:
    try:
        parts = [int(v) for v in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or not all(0 <= v <= 255 for v in parts):
        raise argparse.ArgumentTypeError(f"a colour must look like R,G,B (0-255), got {text!r}")
    return parts[0], parts[1], parts[2]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="kquant",
        description="K-means colour quantization of RGB imagery "
        "into a zarr store of a palette and bit-packed labels.",
    )
    from kquant import __version__

    p.add_argument("--version", action="version", version=f"kquant {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    q = sub.add_parser("quantize", help="quantize an image into a store")
    q.add_argument("source", help="image file (PNG, JPEG, TIFF, ...) or zarr array")
    q.add_argument("target", help="store to write (a zarr v3 group)")
    _add_run_options(q)
    q.add_argument(
        "--palette",
        metavar="FILE|STORE",
        help="remap onto this palette (a store, .gpl, .npy, hex/RGB text, or image) "
        "instead of fitting one",
    )
    q.add_argument("--overwrite", action="store_true", help="replace an existing store/preview")
    q.add_argument(
        "--preview", metavar="P.png", help="also write original | reconstruction + palette"
    )
    q.add_argument("--json", action="store_true", help="print the result as JSON")

    d = sub.add_parser("decode", help="rebuild the RGB image (or a window) from a store")
    d.add_argument("store")
    d.add_argument("out", help="output image, .png or .tif/.tiff")
    d.add_argument("--window", type=_window, metavar="y0:y1,x0:x1")
    d.add_argument(
        "--level",
        type=int,
        default=0,
        metavar="N",
        help="decode pyramid level N (each halves the size; the window in its pixels)",
    )
    d.add_argument(
        "--fill",
        type=_colour,
        metavar="R,G,B",
        help="give masked pixels this colour (RGB output) instead of alpha 0 (RGBA output)",
    )
    d.add_argument("--overwrite", action="store_true")

    i = sub.add_parser("info", help="print a store's attributes and metrics")
    i.add_argument("store")
    i.add_argument("--json", action="store_true")
    i.add_argument("--verify", action="store_true", help="also recompute the labels' checksum")

    e = sub.add_parser(
        "export", help="write a store as an indexed PNG, a palette TIFF or an OME-Zarr folder"
    )
    e.add_argument("store")
    e.add_argument(
        "out",
        help="output: .png (indexed), .tif/.tiff (palette colormap), or .ome.zarr "
        "(OME-NGFF: RGB image and plain uint8 labels, with their pyramid)",
    )
    e.add_argument(
        "--cog",
        action="store_true",
        help="(.tif) a Cloud-Optimized GeoTIFF: tiled 512, the palette as its colour table, "
        "the nodata index, overviews by mode down to one tile, the store's georeferencing",
    )
    e.add_argument(
        "--compress",
        choices=("deflate", "zstd"),
        default="deflate",
        help="compression of the COG (default deflate)",
    )
    e.add_argument("--overwrite", action="store_true")

    u = sub.add_parser(
        "upgrade", help="rewrite a store of an older format in the current one, in place"
    )
    u.add_argument("store")
    u.add_argument(
        "--pyramid",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also write pyramid levels (default: for images of 2^24 pixels or more)",
    )
    u.add_argument(
        "--address",
        default=None,
        help="dask scheduler address (default: $DASK_SCHEDULER_ADDRESS or local)",
    )

    n = sub.add_parser(
        "notify",
        help="tell a Prefect server that images arrived (event kquant.image.arrived; the "
        "inbox deployment runs on it)",
    )
    n.add_argument("uri", nargs="+", help="image path or URL (s3://...)")
    n.add_argument("--api-url", default=None, help="Prefect API URL (default: $PREFECT_API_URL)")

    m = sub.add_parser("demo", help="quantize the bundled sample image")
    m.add_argument("--out", default="kquant-demo", help="folder for the store and preview")
    _add_run_options(m)
    return p


def _add_run_options(p: argparse.ArgumentParser) -> None:
    from kquant.params import add_arguments

    add_arguments(p)  # every QuantizeParams field the command line offers
    p.add_argument(
        "--address",
        default=None,
        help="dask scheduler address (default: $DASK_SCHEDULER_ADDRESS or local)",
    )
    p.add_argument(
        "--scheduler-file",
        default=None,
        metavar="FILE",
        help="dask scheduler file (dask scheduler --scheduler-file FILE; default: "
        "$DASK_SCHEDULER_FILE)",
    )
    p.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=None,
        help="refuse images whose header claims more pixels",
    )


def _address(args) -> str | None:
    """``--address``, else the address in ``--scheduler-file``; None leaves the choice to
    the library (``$DASK_SCHEDULER_ADDRESS``, ``$DASK_SCHEDULER_FILE``, local threads)."""
    from kquant import cluster

    return (
        cluster.resolve_address(args.address, args.scheduler_file)
        if args.address or (args.scheduler_file)
        else None
    )


def _params(args):
    from kquant.params import QuantizeParams

    return QuantizeParams.from_args(args)


def _summary(result) -> str:
    m = result.meta.metrics
    psnr = "inf (lossless)" if m["psnr"] is None else f"{m['psnr']:.2f} dB"
    colours = f", {result.fit.n_unique} colours" if result.fit.n_unique else ""
    lines = [
        f"store      {result.target}",
        f"image      {result.meta.height} x {result.meta.width} px{colours}",
        f"palette    {result.meta.n_colors} colours ({result.meta.bits} bits/px)",
        f"quality    PSNR {psnr}, MSE {m['mse']:.3f}",
        f"size       {format_bytes(m['store_bytes'])} on disk, "
        f"{m['store_bits_per_pixel']:.3f} bits/px",
        f"time       {result.timings['total']:.2f} s",
    ]
    if "target_psnr_met" in m:
        target = result.meta.params.get("target_psnr")
        lines.append(
            f"target     PSNR {target:.2f} dB "
            + ("met" if m["target_psnr_met"] else f"NOT met even at K={result.meta.k}")
        )
    if result.preview:
        lines.append(f"preview    {result.preview}")
    if result.export:
        lines.append(f"export     {result.export}  (Cloud-Optimized GeoTIFF)")
    return "\n".join(lines)


def _quantize(args) -> int:
    from kquant import pipeline

    result = pipeline.quantize(
        args.source,
        args.target,
        _params(args),
        overwrite=args.overwrite,
        preview_path=args.preview,
        max_pixels=args.max_pixels,
        address=_address(args),
        progress=sys.stderr.isatty(),
        palette=args.palette,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "target": result.target,
                    "meta": result.meta.to_json(),
                    "timings": result.timings,
                    "preview": result.preview,
                    "export": result.export,
                },
                indent=2,
            )
        )
    else:
        print(_summary(result))
    return 0


def _decode(args) -> int:
    from kquant import export

    out, (h, w) = export.decode(
        args.store,
        args.out,
        window=args.window,
        overwrite=args.overwrite,
        level=args.level,
        fill=args.fill,
    )
    print(f"wrote {args.out} ({h} x {w} px)")
    return 0


def _export(args) -> int:
    from kquant import export

    out = export.export(
        args.store, args.out, overwrite=args.overwrite, cog=args.cog, compress=args.compress
    )
    print(f"wrote {out}")
    return 0


def _upgrade(args) -> int:
    from kquant.pipeline.upgrade import upgrade
    from kquant.store import FORMAT_VERSION

    meta, changed = upgrade(
        args.store, pyramid=args.pyramid, address=args.address, progress=sys.stderr.isatty()
    )
    if not changed:
        print(f"{args.store} is already in format {meta.format_version}: nothing to do")
        return 0
    levels = f", {meta.levels} pyramid levels" if meta.levels > 1 else ""
    print(f"upgraded {args.store} to format {FORMAT_VERSION}{levels}")
    return 0


def _info(args) -> int:
    from kquant import store
    from kquant.io import uri as uri_mod

    meta = store.read_meta(args.store)
    if args.json:
        print(json.dumps(meta.to_json(), indent=2))
    if not meta.complete:
        raise IncompleteStoreError(
            f"{args.store} is incomplete (status {meta.status!r}): "
            "its run crashed or is still writing"
        )
    if args.verify:
        store.open_store(args.store).verify()
    if not args.json:
        m = meta.metrics
        psnr = m.get("psnr")
        print(
            f"store      {uri_mod.normalise(args.store)}  (kquant format {meta.format_version}, "
            f"written by kquant {meta.library_version})"
        )
        print(f"status     {meta.status}" + ("  (checksum verified)" if args.verify else ""))
        print(f"image      {meta.height} x {meta.width} px   source {meta.source.get('uri')}")
        print(
            f"palette    {meta.n_colors} colours (k={meta.k}), {meta.bits} bits/px, "
            f"chunks {meta.chunk_rows} x {meta.chunk_cols} px"
        )
        for line in _geo_lines(meta):
            print(line)
        if meta.levels > 1:
            smallest = meta.level_shape(meta.levels - 1)
            print(f"pyramid    {meta.levels} levels, down to {smallest[0]} x {smallest[1]} px")
        print(
            f"quality    PSNR {'inf (lossless)' if psnr is None else f'{psnr:.2f} dB'}, "
            f"MSE {m.get('mse', math.nan):.3f}"
        )
        print(
            f"size       {format_bytes(m.get('store_bytes', 0))}, "
            f"{m.get('store_bits_per_pixel', math.nan):.3f} bits/px on disk"
        )
        print(f"params     {json.dumps(meta.params, sort_keys=True)}")
    return 0


def _notify(args) -> int:
    from kquant import events

    events.post([events.image_arrived(u) for u in args.uri], api_url=args.api_url)
    for u in args.uri:
        print(f"{events.IMAGE_ARRIVED} {events.image_resource(u)['kquant.uri']}")
    return 0


def _geo_lines(meta) -> list[str]:
    """``kquant info``'s lines on georeferencing and masked pixels (none if neither)."""
    import re

    lines = []
    geo = meta.georeferencing
    if geo is not None:
        name = re.match(r'\s*\w+\["([^"]*)"', geo.wkt2)
        lines.append(
            f"crs        {geo.code or 'custom (no EPSG code)'}"
            + (f"  {name.group(1)}" if name else "")
        )
        a, b, c, d, e, f = geo.transform
        turn = f", rotation/shear terms {b:g}, {d:g}" if geo.rotated else ""
        lines.append(
            f"transform  pixel {a:g} x {e:g}, top-left corner at ({c:.10g}, {f:.10g}){turn}"
        )
    index = meta.nodata_index
    if index is not None:
        masked = meta.metrics.get("masked_pixels")
        share = (
            f"{masked} px masked ({100 * masked / (meta.height * meta.width):.1f} %)"
            if masked is not None
            else "masked pixels"
        )
        lines.append(
            f"nodata     index {index} (transparent): {share}; "
            f"{meta.n_colors - 1} colours + 1 reserved in {meta.bits} bits "
            f"(rule {meta.nodata.get('rule')})"
        )
    return lines


def _demo(args) -> int:
    from importlib import resources

    from kquant import pipeline

    out = Path(args.out)
    if os.path.lexists(out) and not out.is_dir():
        raise ParameterError(f"{out} is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    with resources.as_file(resources.files("kquant") / "data" / "sample.jpg") as sample:
        result = pipeline.quantize(
            sample,
            out / "sample.kquant",
            _params(args),
            overwrite=True,
            preview_path=out / "sample-preview.png",
            max_pixels=args.max_pixels,
            address=_address(args),
            progress=sys.stderr.isatty(),
        )
    print(_summary(result))
    return 0


def _quiet_libraries() -> None:
    """Keep stderr to our one line: library warnings and log chatter only with KQUANT_DEBUG."""
    import logging
    import warnings

    from kquant.errors import KquantWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, KquantWarning):  # ours: one line, as the errors
            print(f"kquant: warning: {' '.join(str(message).split())}", file=sys.stderr)
        else:
            default_show(message, category, filename, lineno, file, line)

    default_show = warnings.showwarning
    warnings.showwarning = show
    if os.environ.get("KQUANT_DEBUG"):
        return
    warnings.simplefilter("ignore")
    warnings.simplefilter("default", KquantWarning)
    for name in (
        "tifffile",
        "imageio",
        "PIL",
        "zarr",
        "numcodecs",
        "distributed",
        "fsspec",
        "asyncio",
    ):
        logging.getLogger(name).setLevel(logging.CRITICAL)


class _NoSparseForDaskArray:
    """Import finder: ``import sparse`` fails while dask.array initialises, and only then.

    dask.array imports pydata/sparse (and with it numba, ~1 s of start-up) only to
    register its array type as a chunk type, which kquant never makes. Installed once,
    the finder lets dask.array be imported later, when (and if) a run needs it: a small
    image never imports dask at all. ``import sparse`` elsewhere (dask-ml's
    dependencies) works as usual.
    """

    def find_spec(self, name, path=None, target=None):
        if name == "sparse" and _initialising("dask.array"):
            raise ModuleNotFoundError("sparse is not imported by kquant's command line", name=name)
        return None


def _initialising(module: str) -> bool:
    spec = getattr(sys.modules.get(module), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _skip_sparse_import() -> None:
    """Install :class:`_NoSparseForDaskArray` (once), unless dask.array is already imported."""
    if "dask.array" in sys.modules or "sparse" in sys.modules:
        return
    if not any(isinstance(f, _NoSparseForDaskArray) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoSparseForDaskArray())


class _StdoutClosed(Exception):
    """The reader of stdout has gone: the command ends quietly."""


class _GuardedStdout:
    """``sys.stdout`` while a command runs: a broken pipe on it becomes
    :class:`_StdoutClosed`, told apart from one elsewhere (a socket to a cluster)."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise _StdoutClosed() from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise _StdoutClosed() from None

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _drop_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered must not fail again at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a file descriptor (captured)
        pass


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    if args.command in ("quantize", "demo", "decode", "export", "upgrade"):
        _skip_sparse_import()
    handler = {
        "quantize": _quantize,
        "decode": _decode,
        "info": _info,
        "demo": _demo,
        "export": _export,
        "upgrade": _upgrade,
        "notify": _notify,
    }[args.command]
    try:
        with contextlib.redirect_stdout(_GuardedStdout(sys.stdout)):
            return handler(args)
    except _StdoutClosed:  # quiet, like any Unix tool whose reader has gone
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the exit short
        print("kquant: interrupted", file=sys.stderr)
        return 130
    except IncompleteStoreError as exc:
        print(f"kquant: error: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except KquantError as exc:
        print(f"kquant: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except MemoryError:
        print(
            "kquant: error: out of memory (use smaller --chunk or a tiled input)", file=sys.stderr
        )
        return 1
    except Exception as exc:  # unexpected: still one line, traceback on request
        if os.environ.get("KQUANT_DEBUG"):
            raise
        print(
            f"kquant: error: unexpected {type(exc).__name__}: {reason(exc)} "
            "(set KQUANT_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


def run() -> None:
    """Console entry point: ``main()``, then the process ends at once with its status.

    By the time ``main`` returns, the run's work and cleanup are done (stores committed or
    removed, files closed, locks released, a cluster client closed). The interpreter's own
    teardown (finalising every imported module: ~30 ms, a tenth of quantizing a photo) is
    skipped with ``os._exit`` once stdout and stderr are flushed. Interrupted (130), this
    also means not waiting for dask threads still finishing a computation.
    """
    try:
        code = main()
    except SystemExit as exc:  # --help, --version, usage errors: the same flush below
        if exc.code is not None and not isinstance(exc.code, int):
            raise
        code = exc.code or 0
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader has gone (`kquant info | head`) before the last lines
        code = code or EXIT_BROKEN_PIPE
    except (OSError, ValueError):
        pass
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
