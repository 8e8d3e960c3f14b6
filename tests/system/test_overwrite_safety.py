"""Nothing lost, whatever the operator does, on real ``python -m kquant`` processes.

``--overwrite`` replaces only what kquant wrote (a kquant store, complete or not, or a plain
output file): never the source, a folder or prefix holding it, or anything that is not a
kquant store. Output files are written through exclusively created temporary files, so a
symbolic link planted beside the output is never followed. ``kquant ... | head`` ends
quietly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from helpers import moto_s3, photo_like

import kquant
from kquant import QuantizeParams, export, pipeline, store

VICTIM = b"precious data outside the output folder\n"


def run(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    e = dict(os.environ, **(env or {}))
    e.pop("KQUANT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "kquant", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=e,
        timeout=300,
    )


def assert_refused(p: subprocess.CompletedProcess, *fragments: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kquant: error: "), p.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def snapshot(root: Path) -> dict:
    """Every entry under ``root``: file bytes, link targets, folders (links not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", p.read_bytes())
    return out


def photo(path: Path, seed: int = 1) -> Path:
    iio.imwrite(path, photo_like(60, 80, seed=seed))
    return path


def make_store(src: Path, target: Path, k: int = 4) -> None:
    kquant.quantize(src, target, QuantizeParams(k=k, restarts=0))


@pytest.mark.parametrize("form", ["plain", "trailing-slash", "file-url", "relative", "symlink"])
def test_overwrite_refuses_the_folder_holding_the_source(tmp_path, form):
    d = tmp_path / "d"
    d.mkdir()
    photo(d / "china.png")
    (d / "notes.txt").write_text("the user's notes\n")
    (d / "sub").mkdir()
    (d / "sub" / "more.png").write_bytes(b"more")
    source, cwd = str(d / "china.png"), None
    target = {
        "plain": str(d),
        "trailing-slash": f"{d}/",
        "file-url": f"file://{d}",
        "relative": "d",
        "symlink": str(tmp_path / "link"),
    }[form]
    if form == "relative":
        source, cwd = "d/china.png", tmp_path
    if form == "symlink":
        (tmp_path / "link").symlink_to(d, target_is_directory=True)
    before = snapshot(tmp_path)
    p = run("quantize", source, target, "--overwrite", "-k", "8", cwd=cwd)
    assert_refused(p, "the source", "not replaced")
    assert snapshot(tmp_path) == before  # nothing touched, no lock or temporary store left


@pytest.mark.parametrize("form", ["same", "relative", "file-url"])
def test_overwrite_refuses_the_source_itself(tmp_path, form):
    src = photo(tmp_path / "p.png")
    target, cwd = {
        "same": (src, None),
        "relative": ("./p.png", tmp_path),
        "file-url": (f"file://{src}", None),
    }[form]
    before = snapshot(tmp_path)
    p = run("quantize", src, target, "--overwrite", "-k", "8", cwd=cwd)
    assert_refused(p, "is the source")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "kind",
    [
        "folder",
        "file",
        "store-holding-source",
        "store-with-foreign-file",
        "link-to-folder",
        "dangling-link",
    ],
)
def test_overwrite_refuses_what_kquant_did_not_write(tmp_path, kind):
    src = photo(tmp_path / "src.png")
    t = tmp_path / "t.kquant"
    fragment = "not a kquant store"
    if kind == "folder":
        t.mkdir()
        (t / "keep.txt").write_text("user data\n")
    elif kind == "file":
        t.write_text("a file where a store is expected\n")
    elif kind == "store-holding-source":  # the image was put inside an old store folder
        make_store(src, t)
        src = photo(t / "inside.png", seed=2)
        fragment = "holds the source"
    elif kind == "store-with-foreign-file":
        make_store(src, t)
        (t / "README.txt").write_text("someone's notes\n")
        fragment = "kquant did not write (README.txt)"
    elif kind == "link-to-folder":
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "keep.txt").write_text("user data\n")
        t.symlink_to(tmp_path / "other", target_is_directory=True)
    else:
        t.symlink_to(tmp_path / "nowhere")
    before = snapshot(tmp_path)
    p = run("quantize", src, t, "--overwrite", "-k", "4")
    assert_refused(p, fragment)
    assert snapshot(tmp_path) == before


def test_demo_refuses_a_folder_that_is_not_its_store(tmp_path):
    (tmp_path / "demo" / "sample.kquant").mkdir(parents=True)
    (tmp_path / "demo" / "sample.kquant" / "keep.txt").write_text("user data\n")
    before = snapshot(tmp_path)
    assert_refused(run("demo", "--out", tmp_path / "demo"), "not a kquant store")
    assert snapshot(tmp_path) == before


def test_preview_is_never_the_source_nor_inside_the_store(tmp_path):
    src = photo(tmp_path / "src.png")
    make_store(src, tmp_path / "s.kquant")
    before = snapshot(tmp_path)
    assert_refused(
        run("quantize", src, tmp_path / "n.kquant", "--preview", src, "--overwrite"),
        "is the source",
    )
    assert_refused(
        run(
            "quantize",
            src,
            tmp_path / "s.kquant",
            "--overwrite",
            "--preview",
            tmp_path / "s.kquant" / "p.png",
        ),
        "inside the store",
    )
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_what_kquant_wrote(tmp_path):
    import zarr

    from kquant.store import StoreMeta

    src = photo(tmp_path / "src.png")
    # a complete store: replaced
    make_store(src, tmp_path / "s.kquant", k=4)
    p = run("quantize", src, tmp_path / "s.kquant", "--overwrite", "-k", "8", "--restarts", "0")
    assert p.returncode == 0, p.stderr
    assert kquant.open_store(tmp_path / "s.kquant").meta.n_colors == 8
    # an incomplete store (a crashed run's): replaced
    g = zarr.open_group(str(tmp_path / "half.kquant"), mode="w")
    g.attrs["kquant"] = StoreMeta(
        height=4, width=4, k=2, n_colors=2, bits=1, chunk_rows=4, chunk_cols=4
    ).to_json()
    p = run("quantize", src, tmp_path / "half.kquant", "--overwrite", "-k", "4", "--restarts", "0")
    assert p.returncode == 0, p.stderr
    assert kquant.open_store(tmp_path / "half.kquant").meta.complete
    # plain output files: replaced
    for name in ("d.png", "e.tif", "p.png"):
        (tmp_path / name).write_bytes(b"an old output")
    assert run("decode", tmp_path / "s.kquant", tmp_path / "d.png", "--overwrite").returncode == 0
    assert run("export", tmp_path / "s.kquant", tmp_path / "e.tif", "--overwrite").returncode == 0
    p = run(
        "quantize",
        src,
        tmp_path / "s.kquant",
        "--overwrite",
        "-k",
        "8",
        "--restarts",
        "0",
        "--preview",
        tmp_path / "p.png",
    )
    assert p.returncode == 0, p.stderr
    st = kquant.open_store(tmp_path / "s.kquant")
    assert np.array_equal(iio.imread(tmp_path / "d.png"), st.rgb.compute())
    assert np.array_equal(tifffile.imread(tmp_path / "e.tif"), st.labels.compute())
    assert iio.imread(tmp_path / "p.png").shape[1] == 2 * 80 + 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_library_calls_apply_the_same_rule(tmp_path):
    """The flows call pipeline.write/preview and store.check_target: they get the rule too."""
    from kquant.errors import UnsafeTargetError

    d = tmp_path / "d"
    d.mkdir()
    src = photo(d / "a.png")
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeTargetError):
        pipeline.quantize(src, d, QuantizeParams(k=4), overwrite=True)
    with pytest.raises(UnsafeTargetError):
        pipeline.write(src, d, np.eye(3, dtype=np.uint8) * 255, QuantizeParams(k=4), overwrite=True)
    with pytest.raises(UnsafeTargetError):
        pipeline.preview(src, np.eye(3, dtype=np.uint8) * 255, src)
    with pytest.raises(UnsafeTargetError):
        store.check_target(d, overwrite=True)
    assert snapshot(tmp_path) == before
    make_store(src, tmp_path / "s.kquant")
    with pytest.raises(UnsafeTargetError):
        export.export(tmp_path / "s.kquant", tmp_path / "s.kquant" / "x.png")


@pytest.mark.slow
def test_overwrite_on_s3_never_wipes_a_prefix(tmp_path):
    with moto_s3(tmp_path, "kqbox") as s3:
        png = photo(tmp_path / "a.png")
        objects = {
            "kqbox/inbox/a.png": png.read_bytes(),
            "kqbox/inbox/b.png": b"another image",
            "kqbox/inbox/notes/readme.txt": b"notes",
            "kqbox/other/keep.txt": b"keep",
        }
        for key, data in objects.items():
            s3.pipe_file(key, data)

        def stored():
            s3.invalidate_cache()
            return {k: s3.cat_file(k) for k in s3.find("kqbox")}

        for target, fragment in [
            ("s3://kqbox/inbox", "holds the source"),
            ("s3://kqbox/inbox/", "holds the source"),
            ("s3://kqbox//inbox", "holds the source"),
            ("s3://kqbox/inbox/a.png", "is the source"),
            ("s3://kqbox/other", "not a kquant store"),
        ]:
            p = run("quantize", "s3://kqbox/inbox/a.png", target, "--overwrite", "-k", "8")
            assert_refused(p, fragment)
            assert stored() == objects, target
        # a store on the bucket is still replaced
        p = run(
            "quantize",
            "s3://kqbox/inbox/a.png",
            "s3://kqbox/out/a.kquant",
            "-k",
            "4",
            "--restarts",
            "0",
        )
        assert p.returncode == 0, p.stderr
        p = run(
            "quantize",
            "s3://kqbox/inbox/a.png",
            "s3://kqbox/out/a.kquant",
            "-k",
            "8",
            "--restarts",
            "0",
            "--overwrite",
        )
        assert p.returncode == 0, p.stderr
        assert kquant.open_store("s3://kqbox/out/a.kquant").meta.n_colors == 8
        assert {k: v for k, v in stored().items() if k in objects} == objects


@pytest.mark.parametrize("command", ["preview", "decode", "export"])
def test_outputs_never_follow_planted_symlinks(tmp_path, command):
    src = photo(tmp_path / "src.png")
    make_store(src, tmp_path / "s.kquant")
    victim = tmp_path / "elsewhere" / "victim.bin"
    victim.parent.mkdir()
    victim.write_bytes(VICTIM)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    name = {"preview": "p.png", "decode": "x.png", "export": "x.tif"}[command]
    out = out_dir / name
    # the names an attacker can predict: the fixed temporary names of earlier versions
    planted = [
        out_dir / f"{name}.kquant-tmp.png",
        out_dir / f".{name}.kquant-tmp{out.suffix}",
        out_dir / f".{name}.kquant-tmp",
    ]
    for link in planted:
        link.symlink_to(victim)

    def write(*extra):
        if command == "preview":
            return run(
                "quantize",
                src,
                tmp_path / "s.kquant",
                "--overwrite",
                "-k",
                "4",
                "--restarts",
                "0",
                "--preview",
                out,
                *extra,
            )
        return run(command, tmp_path / "s.kquant", out, *extra)

    p = write()
    assert p.returncode == 0, p.stderr
    assert victim.read_bytes() == VICTIM
    assert out.is_file() and not out.is_symlink()
    assert (iio.imread(out) if out.suffix == ".png" else tifffile.imread(out)).size
    assert all(link.is_symlink() for link in planted)
    assert sorted(out_dir.iterdir()) == sorted(planted + [out])  # no temporary file left

    # a symbolic link at the output's own name: an existing output without --overwrite,
    # replaced itself (never written through) with it
    out.unlink()
    out.symlink_to(victim)
    if command != "preview":  # the preview's run replaces the store: --overwrite is given
        assert_refused(write(), "exists", "--overwrite")
        assert out.is_symlink() and victim.read_bytes() == VICTIM
    p = write("--overwrite") if command != "preview" else write()
    assert p.returncode == 0, p.stderr
    assert out.is_file() and not out.is_symlink()
    assert victim.read_bytes() == VICTIM


def test_dangling_symlink_counts_as_an_existing_output(tmp_path):
    src = photo(tmp_path / "src.png")
    make_store(src, tmp_path / "s.kquant")
    out = tmp_path / "x.png"
    out.symlink_to(tmp_path / "not-yet")
    assert_refused(run("decode", tmp_path / "s.kquant", out), "exists")
    assert_refused(run("export", tmp_path / "s.kquant", out), "exists")
    assert out.is_symlink() and not (tmp_path / "not-yet").exists()


def test_exclusive_temporary_file_skips_a_planted_name(tmp_path, monkeypatch):
    """Even a guessed temporary name is not followed: it exists, another one is drawn."""
    from kquant.errors import TargetExistsError
    from kquant.io import atomicfile

    victim = tmp_path / "victim.bin"
    victim.write_bytes(VICTIM)
    out = tmp_path / "out" / "x.bin"
    out.parent.mkdir()
    names = iter(["a" * 12, "b" * 12, "c" * 12])
    monkeypatch.setattr(atomicfile.secrets, "token_hex", lambda n: next(names))
    guessed = out.parent / f".x.bin.{atomicfile.TMP_TAG}-{'a' * 12}"
    guessed.symlink_to(victim)
    with atomicfile.replacing(out, overwrite=False) as fh:
        fh.write(b"new")
    assert out.read_bytes() == b"new" and victim.read_bytes() == VICTIM
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([guessed.name, "x.bin"])
    # not replaced without overwrite, even when the output appears during the write
    with pytest.raises(TargetExistsError):
        with atomicfile.replacing(out, overwrite=False) as fh:
            fh.write(b"newer")
    assert out.read_bytes() == b"new"
    # an error in the writer leaves the output as it was and no temporary file
    with pytest.raises(RuntimeError):
        with atomicfile.replacing(out, overwrite=True) as fh:
            fh.write(b"half")
            raise RuntimeError("writer failed")
    assert out.read_bytes() == b"new"
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([guessed.name, "x.bin"])


@pytest.mark.parametrize("buffered,lines", [(False, 0), (False, 2), (True, 0)])
def test_output_cut_short_by_head_ends_quietly(tmp_path, buffered, lines):
    make_store(photo(tmp_path / "src.png"), tmp_path / "s.kquant")
    env = dict(os.environ)
    env.pop("KQUANT_DEBUG", None)
    env.pop("PYTHONUNBUFFERED", None)
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    for extra in ("", "--json"):
        script = (
            f'"{sys.executable}" -m kquant info "{tmp_path / "s.kquant"}" {extra} '
            f'2>"{tmp_path / "err"}" | head -n {lines} >"{tmp_path / "out"}"; '
            f'echo "${{PIPESTATUS[0]}}" >"{tmp_path / "status"}"'
        )
        subprocess.run(["bash", "-c", script], env=env, timeout=120, check=True)
        status = int((tmp_path / "status").read_text())
        assert (tmp_path / "err").read_text() == ""
        assert len((tmp_path / "out").read_text().splitlines()) == lines
        # 141 (128 + SIGPIPE) when output was lost, as for cat or grep; 0 if it all fitted
        assert status == 141 if lines == 0 else status in (0, 141), status
    p = run("info", tmp_path / "s.kquant", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["status"] == "complete"
