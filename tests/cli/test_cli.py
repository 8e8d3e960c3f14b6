"""The ``kquant`` command line: quantize, info, decode, demo; bad parameters and inputs."""

import json
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from helpers import photo_like

import kquant


def run(*args, cwd=None, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "kquant", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=e,
        timeout=300,
    )


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kquant: error:") or "error:" in lines[0]
    for f in fragments:
        assert f in lines[0], lines[0]


def test_quantize_info_decode(photo_png, tmp_path):
    path, img = photo_png
    p = run(
        "quantize",
        path,
        tmp_path / "s.kq",
        "-k",
        "8",
        "--chunk",
        "64",
        "--preview",
        tmp_path / "p.png",
    )
    assert p.returncode == 0, p.stderr
    assert "PSNR" in p.stdout and (tmp_path / "p.png").is_file()
    info = run("info", tmp_path / "s.kq", "--json", "--verify")
    assert info.returncode == 0, info.stderr
    meta = json.loads(info.stdout)
    assert meta["status"] == "complete" and meta["bits"] == 4 and meta["height"] == 150
    assert meta["metrics"]["psnr"] > 20 and meta["params"]["k"] == 8
    d = run("decode", tmp_path / "s.kq", tmp_path / "full.png")
    assert d.returncode == 0, d.stderr
    full = iio.imread(tmp_path / "full.png")
    st = kquant.open_store(tmp_path / "s.kq")
    assert np.array_equal(full, st.rgb.compute())
    d = run("decode", tmp_path / "s.kq", tmp_path / "w.tif", "--window", "10:100,20:200")
    assert d.returncode == 0, d.stderr
    assert np.array_equal(tifffile.imread(tmp_path / "w.tif"), full[10:100, 20:200])


def test_demo_runs_on_the_bundled_sample(tmp_path):
    p = run("demo", "--out", tmp_path / "demo", "--restarts", "0")
    assert p.returncode == 0, p.stderr
    assert kquant.open_store(tmp_path / "demo" / "sample.kquant").meta.complete
    assert (tmp_path / "demo" / "sample-preview.png").is_file()


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["-k", "1"], "between 2 and 256"),
        (["-k", "257"], "between 2 and 256"),
        (["--chunk", "0"], "chunk must be a positive integer"),
        (["--sample", "3"], "sample size"),
        (["--max-pixels", "100"], "above the limit"),
    ],
)
def test_bad_parameters(photo_png, tmp_path, args, fragment):
    path, _ = photo_png
    p = run("quantize", path, tmp_path / "s.kq", *args)
    assert_one_line_error(p, fragment)
    assert not (tmp_path / "s.kq").exists()
    assert [q.name for q in tmp_path.iterdir()] == ["photo.png"]


def test_bad_inputs_leave_nothing(tmp_path):
    cases = {
        "empty.png": b"",
        "text.jpg": b"just some text\n" * 10,
        "random.tif": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    }
    iio.imwrite(tmp_path / "ok.png", photo_like(64, 64))
    data = (tmp_path / "ok.png").read_bytes()
    cases["truncated.png"] = data[: len(data) // 3]
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        p = run("quantize", tmp_path / name, tmp_path / f"{name}.kq")
        assert_one_line_error(p, name)
        assert not list(tmp_path.glob(f"*{name}.kq*")), name
    assert_one_line_error(run("quantize", tmp_path / "nope.png", tmp_path / "x.kq"), "no such file")


def test_existing_output_needs_overwrite(photo_png, tmp_path):
    path, _ = photo_png
    (tmp_path / "s.kq").mkdir()
    p = run("quantize", path, tmp_path / "s.kq", "--restarts", "0")
    assert_one_line_error(p, "exists", "--overwrite")
    assert list((tmp_path / "s.kq").iterdir()) == []  # untouched
    p = run("quantize", path, tmp_path / "s.kq", "--restarts", "0", "--overwrite")
    assert p.returncode == 0, p.stderr
    assert kquant.open_store(tmp_path / "s.kq").meta.complete


def test_info_refuses_incomplete_and_foreign(tmp_path):
    import zarr

    from kquant.store import StoreMeta

    g = zarr.open_group(str(tmp_path / "half.kq"), mode="w")
    g.attrs["kquant"] = StoreMeta(
        height=4, width=4, k=2, n_colors=2, bits=1, chunk_rows=4, chunk_cols=4
    ).to_json()
    p = run("info", tmp_path / "half.kq")
    assert p.returncode == 3
    assert_one_line_error(p, "incomplete")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    assert_one_line_error(run("info", tmp_path / "other.zarr"), "not a kquant store")
    assert_one_line_error(run("decode", tmp_path / "half.kq", tmp_path / "o.png"), "incomplete")
    assert not (tmp_path / "o.png").exists()


def test_notify_posts_the_arrival_event_to_the_api(tmp_path):
    """``kquant notify`` POSTs ``[event]`` to ``$PREFECT_API_URL/events`` (no Prefect import);
    the real server's acceptance and the trigger are tested in tests/system/test_events.py."""
    import http.server
    import threading

    got = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((self.path, self.headers.get("Authorization"), json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        image = tmp_path / "a b.png"
        url = f"http://127.0.0.1:{server.server_port}/api"
        p = run(
            "notify", image, "s3://bucket/in/x.tif",
            env={"PREFECT_API_URL": url, "PREFECT_API_KEY": "k1"},
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert p.stdout.splitlines() == [
            f"kquant.image.arrived {image.as_uri()}",
            "kquant.image.arrived s3://bucket/in/x.tif",
        ]
        ((path, auth, events),) = got
        assert path == "/api/events" and auth == "Bearer k1"
        assert [e["event"] for e in events] == ["kquant.image.arrived"] * 2
        assert events[0]["resource"]["prefect.resource.id"] == f"kquant.image.{image.as_uri()}"
        assert events[1]["payload"] == {"uri": "s3://bucket/in/x.tif"}
        assert len({e["id"] for e in events}) == 2 and all(e["occurred"] for e in events)
    finally:
        server.shutdown()
        server.server_close()


def test_notify_errors_are_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    p = subprocess.run(
        [sys.executable, "-m", "kquant", "notify", str(tmp_path / "a.png")],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert_one_line_error(p, "PREFECT_API_URL")
    from helpers import free_port

    closed = f"http://127.0.0.1:{free_port()}/api"
    assert_one_line_error(run("notify", "x.png", "--api-url", closed), "cannot reach", closed)
