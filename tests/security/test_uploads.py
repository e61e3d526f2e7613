"""Hostile photo uploads to intake's running web process: each is refused with a 4xx and a
Chinese message, with nothing stored (no new file under the media folder, no new row in
``media``), or, for a real photo carrying something else, stored as re-encoded image data only.

Photos are judged by their content, never their name or declared type (intake/media.py). A
polyglot (a real JPEG with an HTML page and a ZIP archive after its end, a PNG with a script in
a text chunk) is a photo to a phone, so it is accepted, but what is kept and served is Pillow's
re-encoding of its pixels: nothing of the payload. Feed takes no uploads of its own: a party
post's photos are intake media ids.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
import requests
from PIL import Image, PngImagePlugin

from tests.e2e.harness import Api, Harness, Township

# The whole system runs for these (tests/security/conftest.py): a minute to start on two cores.
pytestmark = pytest.mark.slow

SCRIPT = b"<html><body><script>alert(document.cookie)</script></body></html>"


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (90, 140, 60)).save(buffer, "JPEG")
    return buffer.getvalue()


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload.html", SCRIPT)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG of a few hundred bytes whose header claims ``width`` × ``height``
    greyscale pixels (rows of zeros, compressed: decoding it whole would take gigabytes)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", rows)
        + png_chunk(b"IEND", b"")
    )


def compressed_bomb() -> bytes:
    """A complete 8000 × 6000 PNG (48 million pixels, over intake's 40 million) that compresses
    to a few dozen kilobytes: under Pillow's own bomb limit, so only intake's limit stops it."""
    buffer = io.BytesIO()
    Image.new("L", (8000, 6000), 0).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def png_with_script() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SCRIPT.decode())
    buffer = io.BytesIO()
    Image.new("RGB", (200, 150), (200, 60, 60)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


class Store:
    """What intake has kept: its media files and its rows in ``media``."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.folder = harness.service_dir("intake") / "media"

    def files(self) -> set[Path]:
        return {p for p in self.folder.rglob("*") if p.is_file()}

    def rows(self) -> int:
        return self.harness.scalar("intake", "SELECT count(*) FROM media")


@pytest.fixture(scope="module")
def resident(township: Township) -> Api:
    return township.resident("sec-upload-resident")


@pytest.fixture
def store(harness: Harness) -> Store:
    return Store(harness)


def upload(resident: Api, name: str, data: bytes, content_type: str) -> requests.Response:
    return resident.http.post(
        resident.base + "/api/v1/media",
        files={"file": (name, data, content_type)},
        timeout=120,
    )


def assert_refused(answer: requests.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text[:500]
    error = answer.json()["error"]
    assert error["code"] == code
    assert any("\u4e00" <= c <= "\u9fff" for c in error["message"]), error


@pytest.mark.parametrize(
    ("name", "data", "content_type", "status", "code"),
    [
        (
            "photo.jpg",
            "这不是照片，只是一段文字。".encode() * 20,
            "image/jpeg",
            415,
            "unsupported_image",
        ),
        ("page.jpg", b"\xff\xd8\xff\xe0" + SCRIPT * 10, "image/jpeg", 422, "corrupt_image"),
        ("script.png", SCRIPT, "image/png", 415, "unsupported_image"),
        ("huge.png", png_declaring(50_000, 50_000), "image/png", 413, "image_too_many_pixels"),
    ],
    ids=["text-named-jpg", "html-behind-jpeg-magic", "html-named-png", "png-declaring-50000x50000"],
)
def test_a_file_that_is_not_a_fit_photo_is_refused_and_nothing_is_kept(
    resident, store, name, data, content_type, status, code
):
    files, rows = store.files(), store.rows()

    assert_refused(upload(resident, name, data, content_type), status, code)

    assert store.files() == files and store.rows() == rows


def test_a_small_png_that_decompresses_to_48_million_pixels_is_refused_and_nothing_is_kept(
    resident, store
):
    files, rows = store.files(), store.rows()
    bomb = compressed_bomb()
    assert len(bomb) < 1024 * 1024

    assert_refused(upload(resident, "bomb.png", bomb, "image/png"), 413, "image_too_many_pixels")

    assert store.files() == files and store.rows() == rows


def test_a_50_mb_upload_is_refused_and_nothing_is_kept(resident, store):
    files, rows = store.files(), store.rows()
    big = jpeg() + b"\x00" * (50 * 1024 * 1024)

    answer = upload(resident, "big.jpg", big, "image/jpeg")

    assert answer.status_code == 413, answer.text[:500]
    assert any("\u4e00" <= c <= "\u9fff" for c in answer.json()["error"]["message"])
    assert store.files() == files and store.rows() == rows


@pytest.mark.parametrize(
    ("name", "data", "content_type"),
    [
        ("polyglot.jpg", jpeg() + SCRIPT + zip_archive(), "image/jpeg"),
        ("polyglot.png", png_with_script(), "image/png"),
    ],
    ids=["jpeg-with-html-and-zip-appended", "png-with-script-in-a-text-chunk"],
)
def test_a_polyglot_photo_is_kept_only_as_re_encoded_image_data(
    resident, store, name, data, content_type
):
    files, rows = store.files(), store.rows()

    answer = upload(resident, name, data, content_type)

    assert answer.status_code == 201, answer.text[:500]
    new = store.files() - files
    assert len(new) == 2 and store.rows() == rows + 1  # the photo and its thumbnail
    served = resident.get(f"/api/v1/media/{answer.json()['id']}")
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    for content in [served.content, *(path.read_bytes() for path in new)]:
        for payload in (b"<script", b"<html", b"PK\x03\x04", b"payload.html"):
            assert payload not in content
        with Image.open(io.BytesIO(content)) as image:
            image.load()
            # Nothing after the image's own end, and no text chunks.
            if image.format == "JPEG":
                assert content.endswith(b"\xff\xd9")
            else:
                assert image.format == "PNG" and not image.text
                assert content.endswith(png_chunk(b"IEND", b""))
    assert served.content in {path.read_bytes() for path in new}
    assert served.content != data
