"""Fixtures for the data tests: generated images and a loopback fake COCO/WikiArt mirror with faults.

Imported by the tests/test_data_*.py modules (not a conftest: tests/conftest.py belongs to the suite).
"""

import base64
import hashlib
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
    until then), "500"/"403"/"410" (that status), "corrupt" (flip the first byte), "flip" (flip
    the middle byte: an image still decodes), "ignore_range" (answer 200 with the whole file to a
    Range request). `flip_rate` flips the middle byte of that share of the other responses
    (seeded). `delay_s` slows every response.

    `checksum` sends the stored file's MD5 as a host would: "etag" (S3: the whole object's MD5 in
    quotes, on 206 answers too), "content-md5" (base64 MD5 of the body sent, RFC 1864),
    "multipart-etag" (S3's `"<md5 of the parts' md5s>-2"`), "weak-etag" (`W/"<32 hex digits>"`); neither
    of the last two is the file's MD5, so a client that took them for one would refuse good bytes.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.bytes_sent = 0
        self.base_url = ""
        self.delay_s = 0.0
        self.checksum: str | None = None
        self.flip_rate = 0.0
        self.random = random.Random(0)
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
            if fault is None and mirror.random.random() < mirror.flip_rate:
                fault = "flip"
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
        start = 0
        if range_header and fault != "ignore_range":
            start = int(range_header.removeprefix("bytes=").split("-")[0])
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self._send_checksum(mirror.checksum, data, data[start:])
        self.end_headers()
        body = _with_fault(data, fault)[start:]
        sent = body[: len(body) // 2] if fault in ("drop", "hang") else body
        self.wfile.write(sent)
        self.wfile.flush()
        with mirror.lock:
            mirror.bytes_sent += len(sent)
        if fault == "hang":
            mirror.released.wait()

    def _send_checksum(self, kind: str | None, data: bytes, body: bytes) -> None:
        """The headers of `kind` (see FakeMirror), computed from the stored bytes, not the ones sent."""
        halves = (data[: len(data) // 2], data[len(data) // 2 :])
        multipart_md5 = hashlib.md5(b"".join(hashlib.md5(half).digest() for half in halves)).hexdigest()
        headers = {
            "etag": ("ETag", f'"{hashlib.md5(data).hexdigest()}"'),
            "multipart-etag": ("ETag", f'"{multipart_md5}-2"'),  # S3: the MD5 of the parts' MD5s
            "weak-etag": ("ETag", f'W/"{hashlib.md5(b"weak" + data).hexdigest()}"'),  # not the file's MD5
            "content-md5": ("Content-MD5", base64.b64encode(hashlib.md5(body).digest()).decode()),
        }
        if kind is not None:
            self.send_header(*headers[kind])

    def log_message(self, *args):
        pass


def _with_fault(data: bytes, fault: str | None) -> bytes:
    """The stored bytes as a faulty network delivers them: one byte flipped for "corrupt" and "flip"."""
    position = {"corrupt": 0, "flip": len(data) // 2}.get(fault)
    if position is None:
        return data
    return data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]


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
