"""Photo rules and storage of intake: every fixture image is made here with Pillow, none committed.

No database or broker: S3 is a real local S3-compatible HTTP server (moto), since S3 lies outside
our system.
"""

from __future__ import annotations

import io
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pillow_heif
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image, ImageCms
from PIL.PngImagePlugin import PngInfo

from intake.media import (
    CleanedImage,
    LocalStorage,
    MediaStorage,
    S3Storage,
    clean_image,
    content_type_for_key,
    media_keys,
    storage_from_settings,
)
from intake.settings import IntakeSettings
from shared.errors import Invalid, NotFound, PayloadTooLarge, UnsupportedMedia

MB = 1024 * 1024
LIMITS = {"max_bytes": 10 * MB, "max_pixels": 40_000_000, "thumb_px": 320}

ORIENTATION, MAKE, GPS_IFD = 0x0112, 0x010F, 0x8825
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def two_halves(size: tuple[int, int], left: str, right: str) -> Image.Image:
    """A picture whose left and right halves differ, so a rotation is visible."""
    image = Image.new("RGB", size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def phone_exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[MAKE] = "Xiaomi"
    exif[GPS_IFD] = {1: "N", 2: (36.0, 17.0, 5.5), 3: "E", 4: (115.0, 9.0, 30.0)}
    return exif


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int, *, idat: bytes) -> bytes:
    """A PNG whose header claims width x height 8-bit greyscale, followed by the given IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def pillow_image_memory() -> int:
    """How many memory blocks Pillow has handed to images so far (its own arena counters)."""
    stats = Image.core.get_stats()
    return stats["allocated_blocks"] + stats["reused_blocks"]


# --- the photo rules ---------------------------------------------------------------------------


def test_a_jpeg_with_exif_orientation_6_comes_out_rotated_and_without_exif():
    photo = encode(two_halves((400, 200), "red", "blue"), "JPEG", exif=phone_exif(6))

    cleaned = clean_image(photo, **LIMITS)

    assert (cleaned.content_type, cleaned.extension) == ("image/jpeg", "jpg")
    image = opened(cleaned.content)
    assert image.format == "JPEG"
    assert image.size == (200, 400) == (cleaned.width, cleaned.height)
    assert len(image.getexif()) == 0
    assert "exif" not in image.info
    # orientation 6 = turn 90° clockwise: the left (red) half ends up on top
    top, bottom = image.getpixel((100, 50)), image.getpixel((100, 350))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_gps_xmp_and_camera_details_are_gone_from_the_photo_and_its_thumbnail():
    photo = encode(Image.new("RGB", (640, 480), "green"), "JPEG", exif=phone_exif(), xmp=XMP)
    assert opened(photo).getexif().get_ifd(GPS_IFD)  # the fixture really carries a location

    cleaned = clean_image(photo, **LIMITS)

    for data in (cleaned.content, cleaned.thumbnail):
        image = opened(data)
        assert len(image.getexif()) == 0
        assert not image.getexif().get_ifd(GPS_IFD)
        assert not {"exif", "xmp", "XML:com.adobe.xmp"} & set(image.info)
        assert b"Xiaomi" not in data and b"xmpmeta" not in data


def test_the_colour_profile_is_kept_while_other_metadata_goes():
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    photo = encode(
        Image.new("RGB", (64, 64), "teal"), "JPEG", icc_profile=profile, exif=phone_exif()
    )

    image = opened(clean_image(photo, **LIMITS).content)

    assert image.info.get("icc_profile") == profile
    assert len(image.getexif()) == 0


def test_a_png_with_transparency_keeps_it_in_the_photo_and_the_thumbnail():
    picture = Image.new("RGBA", (800, 600), (255, 0, 0, 0))
    picture.paste((0, 0, 255, 255), (200, 150, 600, 450))
    info = PngInfo()
    info.add_text("Comment", "拍摄于 沙口集村 张三家门口")
    photo = encode(picture, "PNG", pnginfo=info, exif=phone_exif())

    cleaned = clean_image(photo, **LIMITS)

    assert (cleaned.content_type, cleaned.extension) == ("image/png", "png")
    image = opened(cleaned.content)
    assert image.mode == "RGBA" and image.getpixel((0, 0))[3] == 0
    assert "Comment" not in image.info and len(image.getexif()) == 0
    assert (cleaned.thumbnail_content_type, cleaned.thumbnail_extension) == ("image/png", "png")
    thumb = opened(cleaned.thumbnail)
    assert thumb.format == "PNG" and thumb.mode == "RGBA"
    assert thumb.getpixel((0, 0))[3] == 0 and thumb.getpixel((160, 120))[3] == 255


def test_a_palette_png_with_a_transparent_colour_keeps_the_transparency():
    picture = Image.new("P", (100, 100), 0)
    picture.putpalette([255, 255, 255, 255, 0, 0] + [0] * 762)
    picture.paste(1, (25, 25, 75, 75))
    photo = encode(picture, "PNG", transparency=0)

    cleaned = clean_image(photo, **LIMITS)

    image = opened(cleaned.content)
    assert image.mode == "RGBA"
    assert image.getpixel((0, 0))[3] == 0 and image.getpixel((50, 50)) == (255, 0, 0, 255)
    assert cleaned.thumbnail_extension == "png"


def test_an_opaque_png_stays_png_with_a_jpeg_thumbnail():
    photo = encode(Image.new("RGBA", (500, 500), (10, 20, 30, 255)), "PNG")

    cleaned = clean_image(photo, **LIMITS)

    assert opened(cleaned.content).mode == "RGB"
    assert cleaned.content_type == "image/png"
    assert opened(cleaned.thumbnail).format == "JPEG"
    assert (cleaned.thumbnail_content_type, cleaned.thumbnail_extension) == ("image/jpeg", "jpg")


def test_a_webp_photo_is_accepted_and_stays_webp_without_exif():
    photo = encode(two_halves((300, 200), "red", "blue"), "WEBP", exif=phone_exif(6), xmp=XMP)

    cleaned = clean_image(photo, **LIMITS)

    assert (cleaned.content_type, cleaned.extension) == ("image/webp", "webp")
    image = opened(cleaned.content)
    assert image.format == "WEBP" and image.size == (200, 300)
    assert len(image.getexif()) == 0 and "xmp" not in image.info
    assert b"Xiaomi" not in cleaned.content


def test_an_animated_webp_keeps_only_its_first_frame():
    frames = [Image.new("RGB", (120, 80), colour) for colour in ("red", "lime", "blue")]
    photo = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(photo)).n_frames == 3

    cleaned = clean_image(photo, **LIMITS)

    image = Image.open(io.BytesIO(cleaned.content))
    assert getattr(image, "n_frames", 1) == 1
    red, green, blue = image.convert("RGB").getpixel((60, 40))
    assert red > 200 and green < 60 and blue < 60


def test_a_heic_photo_from_an_iphone_is_served_upright_as_jpeg_rotated_once():
    pillow_heif.register_heif_opener()  # lets the test *write* HEIC with Pillow
    # EXIF orientation 6 as bytes: pillow-heif stores it as the HEIF rotation (irot) that
    # libheif applies on reading, as in an iPhone's file; it must not be applied a second time.
    photo = encode(
        two_halves((320, 240), "red", "blue"), "HEIF", exif=phone_exif(6).tobytes(), quality=90
    )
    assert Image.open(io.BytesIO(photo)).format == "HEIF"

    cleaned = clean_image(photo, **LIMITS)

    assert (cleaned.content_type, cleaned.extension) == ("image/jpeg", "jpg")
    image = opened(cleaned.content)
    assert image.format == "JPEG" and image.size == (240, 320) == (cleaned.width, cleaned.height)
    top, bottom = image.getpixel((120, 40)), image.getpixel((120, 280))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60
    assert len(image.getexif()) == 0 and b"Xiaomi" not in cleaned.content
    assert opened(cleaned.thumbnail).format == "JPEG"


def test_a_cmyk_jpeg_becomes_an_rgb_jpeg():
    photo = encode(Image.new("CMYK", (200, 100), (0, 255, 255, 0)), "JPEG")

    cleaned = clean_image(photo, **LIMITS)

    image = opened(cleaned.content)
    assert image.mode == "RGB"
    red, green, blue = image.getpixel((100, 50))
    assert red > 200 and green < 60 and blue < 60


def test_a_16_bit_greyscale_png_is_scaled_down_not_clipped_to_white():
    picture = Image.new("I;16", (64, 64), 32768)
    photo = encode(picture, "PNG")

    image = opened(clean_image(photo, **LIMITS).content)

    assert image.mode == "L" and 120 <= image.getpixel((10, 10)) <= 136


def test_the_thumbnail_fits_within_thumb_px_and_keeps_the_aspect_ratio():
    photo = encode(Image.new("RGB", (2000, 1000), "orange"), "JPEG")

    cleaned = clean_image(photo, **{**LIMITS, "thumb_px": 320})

    assert opened(cleaned.content).size == (2000, 1000)
    assert opened(cleaned.thumbnail).size == (320, 160)


def test_a_text_file_named_photo_jpg_is_refused_as_unsupported():
    # only the bytes reach clean_image: the name "photo.jpg" and "image/jpeg" play no part
    text = "这不是照片，只是一段文字。\n".encode() * 50

    with pytest.raises(UnsupportedMedia) as caught:
        clean_image(text, **LIMITS)

    assert caught.value.status == 415
    assert caught.value.message == "只支持 JPEG、PNG、WebP、HEIC 格式的照片。"


def test_a_real_gif_is_refused_as_unsupported():
    with pytest.raises(UnsupportedMedia) as caught:
        clean_image(encode(Image.new("P", (10, 10)), "GIF"), **LIMITS)

    assert caught.value.status == 415


def test_a_truncated_jpeg_is_refused_with_a_4xx():
    photo = encode(Image.effect_noise((800, 600), 64).convert("RGB"), "JPEG")

    with pytest.raises((Invalid, UnsupportedMedia)) as caught:
        clean_image(photo[: len(photo) // 2], **LIMITS)

    assert 400 <= caught.value.status < 500
    assert "损坏" in caught.value.message or "只支持" in caught.value.message


def test_an_empty_upload_is_invalid():
    with pytest.raises(Invalid) as caught:
        clean_image(b"", **LIMITS)

    assert caught.value.status == 422 and "没有收到图片" in caught.value.message


def test_11_mb_of_data_is_refused_with_the_limit_in_mb():
    with pytest.raises(PayloadTooLarge) as caught:
        clean_image(b"\xff\xd8\xff" + bytes(11 * MB), **LIMITS)

    assert caught.value.status == 413
    assert caught.value.message == "图片不能超过 10 MB。"


def test_a_png_declaring_20000_by_20000_is_refused_from_its_header_without_decoding():
    # 400 MP: past twice Pillow's MAX_IMAGE_PIXELS, so Pillow's DecompressionBombError fires in
    # Image.open. Decoding would fail as truncated (422); a 413 shows only the header was read.
    bomb = png_declaring(20_000, 20_000, idat=zlib.compress(bytes(20_001 * 4)))
    assert len(bomb) < 1024
    before, started = pillow_image_memory(), time.perf_counter()

    with pytest.raises(PayloadTooLarge) as caught:
        clean_image(bomb, **LIMITS)

    assert time.perf_counter() - started < 0.5
    assert pillow_image_memory() == before  # not one pixel buffer was allocated
    assert caught.value.status == 413 and "4000 万像素" in caught.value.message


def test_a_complete_compressed_bomb_under_pillows_limit_is_refused_by_max_pixels():
    # 8000 x 8000 = 64 MP: below Pillow's own warning (89 MP) but over our 40 MP, and it would
    # decode fine into a 64 MB buffer, so only our header check can stop it.
    packer, row = zlib.compressobj(9), bytes(8_001)
    idat = b"".join(packer.compress(row) for _ in range(8_000)) + packer.flush()
    bomb = png_declaring(8_000, 8_000, idat=idat)
    assert len(bomb) < 200 * 1024
    before, started = pillow_image_memory(), time.perf_counter()

    with pytest.raises(PayloadTooLarge) as caught:
        clean_image(bomb, **LIMITS)

    assert time.perf_counter() - started < 0.5
    assert pillow_image_memory() == before
    assert caught.value.code == "image_too_many_pixels"


def test_the_pixel_limit_comes_from_the_caller():
    photo = encode(Image.new("RGB", (200, 100)), "PNG")

    with pytest.raises(PayloadTooLarge):
        clean_image(photo, **{**LIMITS, "max_pixels": 19_999})
    assert clean_image(photo, **{**LIMITS, "max_pixels": 20_000}).width == 200


# --- keys ---------------------------------------------------------------------------------------


def test_media_keys_file_photos_by_upload_day():
    media_id = uuid.UUID("0b0c0d0e-0000-4000-8000-000000000001")
    now = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)

    assert media_keys(media_id, "jpg", now=now) == (
        f"2026/11/28/{media_id}.jpg",
        f"2026/11/28/{media_id}.thumb.jpg",
    )
    assert media_keys(media_id, ".PNG", "png", now=now)[1] == f"2026/11/28/{media_id}.thumb.png"


def test_a_cleaned_image_names_its_own_keys_and_content_types_follow_them():
    cleaned = CleanedImage(b"x", b"y", "image/webp", "webp", 1, 1, "image/png", "png")
    image_key, thumb_key = cleaned.keys(uuid.uuid4())

    assert content_type_for_key(image_key) == "image/webp"
    assert content_type_for_key(thumb_key) == "image/png"


# --- local storage ------------------------------------------------------------------------------


def test_local_storage_round_trip_leaves_no_temp_files(tmp_path: Path):
    storage = LocalStorage(tmp_path / "media")
    key = "2026/11/28/photo.jpg"

    storage.put(key, b"first", "image/jpeg")
    storage.put(key, b"second", "image/jpeg")

    assert storage.get(key) == b"second"
    assert [p.name for p in (tmp_path / "media" / "2026/11/28").iterdir()] == ["photo.jpg"]
    storage.delete(key)
    storage.delete(key)  # deleting twice is not an error
    with pytest.raises(NotFound) as caught:
        storage.get(key)
    assert caught.value.message == "照片不存在或已被删除。"


@pytest.mark.parametrize(
    "key", ["../outside.jpg", "a/../../outside.jpg", "/etc/passwd", "a\\..\\b.jpg", "", "a//b"]
)
def test_local_storage_refuses_keys_that_escape_its_root(tmp_path: Path, key: str):
    storage = LocalStorage(tmp_path / "media")

    for attempt in (
        lambda: storage.put(key, b"x", "image/jpeg"),
        lambda: storage.get(key),
        lambda: storage.delete(key),
    ):
        with pytest.raises(Invalid):
            attempt()
    assert not (tmp_path / "outside.jpg").exists()


def test_local_storage_refuses_a_symlink_that_leads_out_of_its_root(tmp_path: Path):
    root, outside = tmp_path / "media", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)

    with pytest.raises(Invalid):
        LocalStorage(root).put("link/photo.jpg", b"x", "image/jpeg")
    assert list(outside.iterdir()) == []


# --- S3-compatible storage, against a real local S3 server -------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "service365-test")
        env.setenv("AWS_SECRET_ACCESS_KEY", "service365-test-secret")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture
def bucket(s3_endpoint: str) -> tuple[str, object]:
    name = f"media-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return name, client


def test_s3_storage_round_trip_keeps_the_content_type(s3_endpoint: str, bucket):
    name, client = bucket
    storage = S3Storage(name, endpoint_url=s3_endpoint, region="us-east-1")
    photo = clean_image(encode(Image.new("RGB", (50, 50), "red"), "JPEG"), **LIMITS)
    image_key, _ = photo.keys(uuid.uuid4())

    storage.put(image_key, photo.content, photo.content_type)

    assert storage.get(image_key) == photo.content
    assert client.head_object(Bucket=name, Key=image_key)["ContentType"] == "image/jpeg"
    storage.delete(image_key)
    storage.delete(image_key)
    with pytest.raises(NotFound):
        storage.get(image_key)


def test_s3_storage_answers_not_found_for_a_key_never_written(s3_endpoint: str, bucket):
    storage = S3Storage(bucket[0], endpoint_url=s3_endpoint, region="us-east-1")

    with pytest.raises(NotFound) as caught:
        storage.get("2026/01/01/missing.jpg")

    assert caught.value.status == 404


def test_s3_storage_contacts_nobody_until_first_used():
    # nothing listens on port 9: building the storage (as at import or before fork) must not fail
    storage = S3Storage("bucket", endpoint_url="http://127.0.0.1:9", region="us-east-1")

    assert isinstance(storage, MediaStorage)
    with pytest.raises(Invalid):
        storage.get("../escape")


def test_storage_from_settings_picks_s3_when_a_bucket_is_set(tmp_path: Path):
    local = storage_from_settings(
        IntakeSettings(media_dir=tmp_path / "media", media_s3_bucket=None)
    )
    s3 = storage_from_settings(
        IntakeSettings(
            media_dir=tmp_path / "media",
            media_s3_bucket="service365-media",
            media_s3_endpoint_url="http://minio:9000",
            media_s3_region="cn-north-1",
        )
    )

    assert isinstance(local, LocalStorage) and local.root == tmp_path / "media"
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.endpoint_url, s3.region) == (
        "service365-media",
        "http://minio:9000",
        "cn-north-1",
    )
