"""Fixtures for the data tests: generated images and a loopback fake COCO/WikiArt mirror with faults.

Imported by the tests/test_data_*.py modules (not a conftest: tests/conftest.py belongs to the suite).
"""

import io
import json
import random
import threading
import zipfile
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from PIL import Image


def noise_image(size: tuple[int, int], seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Random pixels, so every generated file has distinct bytes."""
    channels = len(Image.new(mode, (1, 1)).getbands())
    return Image.frombytes(mode, size, random.Random(seed).randbytes(size[0] * size[1] * channels))


def write_image(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(size, seed).save(path)
    return path


def image_bytes(size: tuple[int, int] = (40, 30), seed: int = 0, image_format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    noise_image(size, seed).save(buffer, format=image_format)
    return buffer.getvalue()


class FakeMirror:
    """Files served at http://127.0.0.1:<port>/<path>, with faults queued per path.

    Faults, consumed one per request: "drop" (send half the body, then hang up), "hang" (send
    half the body, then nothing until the test sets `released` or ends), "stall" (send nothing
    until then), "500"/"403"/"410" (that status), "corrupt" (flip the first byte), "ignore_range"
    (answer 200 with the whole file to a Range request). `delay_s` slows every response.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.bytes_sent = 0
        self.base_url = ""
        self.delay_s = 0.0
        self.lock = threading.Lock()
        self.released = threading.Event()

    def add(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return self.url(path)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    def fail(self, path: str, *faults: str) -> None:
        self.faults[path].extend(faults)

    def requests_for(self, path: str) -> list[str | None]:
        return [range_header for requested, range_header in self.requests if requested == path]


class _MirrorHandler(BaseHTTPRequestHandler):
    server: "ThreadingHTTPServer"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        mirror: FakeMirror = self.server.mirror
        path = unquote(urlsplit(self.path).path).lstrip("/")
        range_header = self.headers.get("Range")
        with mirror.lock:
            mirror.requests.append((path, range_header))
            fault = mirror.faults[path].pop(0) if mirror.faults[path] else None
        mirror.released.wait(mirror.delay_s)
        data = mirror.files.get(path)
        if data is None:
            self.send_error(404)
            return
        if fault in ("500", "403", "410"):
            self.send_error(int(fault))
            return
        if fault == "stall":
            mirror.released.wait()  # set by the test, or when the fixture ends
            return
        if fault == "corrupt":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        if range_header and fault != "ignore_range":
            start = int(range_header.removeprefix("bytes=").split("-")[0])
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        sent = body[: len(body) // 2] if fault in ("drop", "hang") else body
        self.wfile.write(sent)
        self.wfile.flush()
        with mirror.lock:
            mirror.bytes_sent += len(sent)
        if fault == "hang":
            mirror.released.wait()

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_mirror():
    mirror = FakeMirror()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MirrorHandler)
    server.daemon_threads = True
    server.mirror = mirror
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    mirror.base_url = f"http://127.0.0.1:{server.server_port}"
    yield mirror
    mirror.released.set()
    server.shutdown()
    server.server_close()


def serve_coco(mirror: FakeMirror, n_images: int, size: tuple[int, int] = (40, 30)) -> list[str]:
    """A fake COCO tree under coco/: the annotations zip with a tiny captions JSON, and the images."""
    names = [f"COCO_train2014_{image_id:012d}.jpg" for image_id in range(1, n_images + 1)]
    captions = {
        "images": [{"id": i, "file_name": name} for i, name in enumerate(names, 1)],
        "annotations": [],
    }
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("annotations/captions_train2014.json", json.dumps(captions))
    mirror.add("coco/annotations/annotations_trainval2014.zip", archive.getvalue())
    for seed, name in enumerate(names):
        mirror.add(f"coco/train2014/{name}", image_bytes(size, seed=seed))
    return names


def serve_wikiart(
    mirror: FakeMirror, n_images: int, size: tuple[int, int] = (40, 30), odd_names: bool = False
) -> list[str]:
    """A fake ArtGAN WikiArt tree under wikiart/: style_train.csv and the images in style folders.

    odd_names: file names as real WikiArt has them, with spaces, apostrophes and accents.
    """
    styles = ("Impressionism", "Cubism", "Ukiyo_e")
    titles = ("l'été à Giverny", "the night café", "Ève et l'ange", "señora", "Straße")
    stems = [f"{titles[i % len(titles)]} {i}" if odd_names else f"painting-{i}" for i in range(n_images)]
    names = [f"{styles[i % 3]}/artist_{stem}.jpg" for i, stem in enumerate(stems)]
    mirror.add(
        "wikiart/wikiart_csv/style_train.csv",
        "".join(f"{name},{i % 3}\n" for i, name in enumerate(names)).encode(),
    )
    for seed, name in enumerate(names):
        mirror.add(f"wikiart/wikiart/{name}", image_bytes(size, seed=100 + seed))
    return names
