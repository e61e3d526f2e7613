"""Photos from residents' phones: the rules a photo must pass, and where the cleaned bytes live.

``clean_image`` checks an upload by its content (never its name or declared type), refuses what
is too big, broken or a decompression bomb, and re-encodes it with the EXIF orientation applied and
every piece of metadata (GPS included) dropped. ``MediaStorage`` keeps the result on the local disk
or in S3-compatible object storage. No Flask here: the routes and the use case call these.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from shared.errors import Invalid, NotFound, PayloadTooLarge, UnsupportedMedia

if TYPE_CHECKING:
    from intake.settings import IntakeSettings

JPEG_QUALITY = 85

# Pillow format id -> (content type, extension) of the served image. HEIC/HEIF becomes JPEG: the
# browsers of most phones cannot show it. MPO is what Pillow calls a JPEG carrying extra pictures
# (many Samsung and Fuji phones write it); it is served as a plain JPEG.
_OUTPUT = {
    "JPEG": ("JPEG", "image/jpeg", "jpg"),
    "MPO": ("JPEG", "image/jpeg", "jpg"),
    "PNG": ("PNG", "image/png", "png"),
    "WEBP": ("WEBP", "image/webp", "webp"),
    "HEIF": ("JPEG", "image/jpeg", "jpg"),
}
_OPENERS = ["JPEG", "PNG", "WEBP", "HEIF"]
_CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}

UNSUPPORTED_MESSAGE = "只支持 JPEG、PNG、WebP、HEIC 格式的照片。"
CORRUPT_MESSAGE = "图片文件已损坏或不完整，请重新拍摄或选择照片。"


@dataclass(frozen=True)
class CleanedImage:
    """A photo fit to serve: re-encoded, upright, without metadata, and its thumbnail."""

    content: bytes
    thumbnail: bytes
    content_type: str
    extension: str
    width: int
    height: int
    thumbnail_content_type: str = "image/jpeg"
    thumbnail_extension: str = "jpg"

    def keys(self, media_id: uuid.UUID, *, now: datetime | None = None) -> tuple[str, str]:
        """Storage keys of this image and its thumbnail (see ``media_keys``)."""
        return media_keys(media_id, self.extension, self.thumbnail_extension, now=now)


@functools.cache
def _register_heif_opener() -> None:
    """Teach Pillow to read HEIC/HEIF (iPhone photos); done once, on first use, not at import."""
    import pillow_heif

    pillow_heif.register_heif_opener()


def _megabytes(size: int) -> str:
    value = size / (1024 * 1024)
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def _ten_thousands(pixels: int) -> str:
    value = pixels / 10_000
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def clean_image(data: bytes, *, max_bytes: int, max_pixels: int, thumb_px: int) -> CleanedImage:
    """Check a photo by its content and re-encode it upright, stripped of EXIF/GPS/XMP.

    Raises ``PayloadTooLarge`` (too many bytes or pixels), ``UnsupportedMedia`` (not a JPEG, PNG,
    WebP or HEIC image) or ``Invalid`` (empty, truncated or corrupt), each with a Chinese message.
    """
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"图片不能超过 {_megabytes(max_bytes)} MB。",
            code="image_too_large",
            details={"max_bytes": max_bytes},
        )
    if not data:
        raise Invalid("没有收到图片内容，请重新选择照片。", code="empty_image")
    _register_heif_opener()

    # Pillow's own bomb check (a warning above MAX_IMAGE_PIXELS, an error above twice that) runs
    # inside Image.open. Ours is never looser, so a bomb is refused here from the header, before
    # anything is decoded, without touching Pillow's process-wide settings.
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    too_many_pixels = PayloadTooLarge(
        f"图片尺寸过大，不能超过 {_ten_thousands(limit)} 万像素。",
        code="image_too_many_pixels",
        details={"max_pixels": limit},
    )
    try:
        image = Image.open(io.BytesIO(data), formats=_OPENERS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise too_many_pixels from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedMedia(UNSUPPORTED_MESSAGE, code="unsupported_image") from exc
    except Exception as exc:  # Pillow's parsers raise many types on hostile headers
        raise Invalid(CORRUPT_MESSAGE, code="corrupt_image") from exc

    with image:
        source_format = image.format or ""
        if source_format not in _OUTPUT:
            raise UnsupportedMedia(UNSUPPORTED_MESSAGE, code="unsupported_image")
        width, height = image.size
        if width <= 0 or height <= 0:
            raise Invalid(CORRUPT_MESSAGE, code="corrupt_image")
        if width * height > limit:
            raise too_many_pixels
        try:
            image.seek(0)  # an animation keeps only its first frame
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no extra copy of a 40 MP photo
            pixels = _normalized(image)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise too_many_pixels from exc
        except Exception as exc:  # truncated data, bad EXIF, decoder errors: all the upload's fault
            raise Invalid(CORRUPT_MESSAGE, code="corrupt_image") from exc

    icc_profile = pixels.info.get("icc_profile")
    # Nothing of the upload's metadata travels on: EXIF (GPS, camera, time), XMP, PNG text chunks.
    # Only the colour profile is kept, so the colours still look right.
    pixels.info = {"icc_profile": icc_profile} if icc_profile else {}

    out_format, content_type, extension = _OUTPUT[source_format]
    if out_format == "JPEG" and pixels.mode == "RGBA":
        pixels = _flattened(pixels)
    content = _encode(pixels, out_format)

    thumb = pixels.copy()
    thumb.thumbnail((thumb_px, thumb_px), Image.Resampling.LANCZOS)
    if thumb.mode == "RGBA":
        thumbnail, thumb_type, thumb_ext = _encode(thumb, "PNG"), "image/png", "png"
    else:
        thumbnail, thumb_type, thumb_ext = _encode(thumb, "JPEG"), "image/jpeg", "jpg"

    return CleanedImage(
        content=content,
        thumbnail=thumbnail,
        content_type=content_type,
        extension=extension,
        width=pixels.width,
        height=pixels.height,
        thumbnail_content_type=thumb_type,
        thumbnail_extension=thumb_ext,
    )


def _normalized(image: Image.Image) -> Image.Image:
    """Bring any decoded mode to L, RGB or RGBA (RGBA only when some pixel is see-through)."""
    mode = image.mode
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        # 16-bit greyscale: scale to 8 bits instead of clipping everything above 255 to white.
        return image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        alpha_low, _ = rgba.getchannel("A").getextrema()
        if alpha_low < 255:
            return rgba
        return rgba.convert("RGB")
    if mode in ("1", "L"):
        return image.convert("L")
    if mode == "RGB":
        return image
    return image.convert("RGB")


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """Print-shop CMYK JPEGs: convert through their ICC profile when they carry one."""
    icc = image.info.get("icc_profile")
    if icc:
        try:
            converted = ImageCms.profileToProfile(
                image,
                ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                ImageCms.createProfile("sRGB"),
                outputMode="RGB",
            )
        except (ImageCms.PyCMSError, OSError, ValueError):
            converted = None
        if converted is not None:
            converted.info.pop("icc_profile", None)
            return converted
    rgb = image.convert("RGB")
    rgb.info.pop("icc_profile", None)  # a CMYK profile would mislabel RGB pixels
    return rgb


def _flattened(image: Image.Image) -> Image.Image:
    """An RGBA image on white, for JPEG which has no alpha."""
    background = Image.new("RGB", image.size, (255, 255, 255))
    background.paste(image, mask=image.getchannel("A"))
    background.info = dict(image.info)
    return background


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    options: dict[str, Any] = {}
    if icc := image.info.get("icc_profile"):
        options["icc_profile"] = icc
    if fmt == "JPEG":
        options.update(quality=JPEG_QUALITY, optimize=True)
    elif fmt == "WEBP":
        options.update(quality=JPEG_QUALITY, method=4)
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def media_keys(
    media_id: uuid.UUID,
    extension: str,
    thumbnail_extension: str = "jpg",
    *,
    now: datetime | None = None,
) -> tuple[str, str]:
    """Storage keys of a photo and its thumbnail, by upload day: ``2026/11/28/<id>.jpg``.

    The thumbnail is JPEG unless the photo has transparency (then PNG): pass
    ``CleanedImage.thumbnail_extension``, or simply call ``CleanedImage.keys(media_id)``.
    """
    day = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y/%m/%d")
    ext = extension.lower().lstrip(".")
    thumb_ext = thumbnail_extension.lower().lstrip(".")
    return f"{day}/{media_id}.{ext}", f"{day}/{media_id}.thumb.{thumb_ext}"


def content_type_for_key(key: str) -> str:
    """The content type to serve a stored key with, from its extension."""
    return _CONTENT_TYPES.get(PurePosixPath(key).suffix.lower().lstrip("."), "image/jpeg")


@runtime_checkable
class MediaStorage(Protocol):
    """Where photo bytes live; keys are relative, slash-separated (``media_keys``)."""

    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes:
        """The stored bytes; ``NotFound`` when there are none."""
        ...

    def delete(self, key: str) -> None:
        """Forget the key; deleting a missing key is not an error."""
        ...


MISSING_MESSAGE = "照片不存在或已被删除。"


def _checked_key(key: str) -> PurePosixPath:
    """Refuse keys that could leave the storage root (``..``, absolute paths, backslashes)."""
    path = PurePosixPath(key)
    if (
        not key
        or "\\" in key
        or "\x00" in key
        or path.is_absolute()
        or any(part in ("", ".", "..") for part in key.split("/"))
    ):
        raise Invalid("文件路径无效。", code="invalid_media_key", details={"key": key})
    return path


class LocalStorage:
    """Photos as files under one folder; each write lands whole or not at all."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        relative = _checked_key(key)
        root = self.root.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root) or path == root:
            # a symlink inside the folder pointing outside it
            raise Invalid("文件路径无效。", code="invalid_media_key", details={"key": key})
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Write to a temp file beside the target, then rename: readers never see half a photo."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp_name, 0o644)
            os.replace(temp_name, path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFound(MISSING_MESSAGE, code="media_not_found") from exc

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Storage:
    """Photos in an S3-compatible bucket (AWS, MinIO, Aliyun OSS).

    Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
    or an instance role). The client is made on first use in each process, never at import or
    before gunicorn forks.
    """

    def __init__(
        self, bucket: str, endpoint_url: str | None = None, region: str | None = None
    ) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self._client: Any = None
        self._client_pid: int | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        pid = os.getpid()
        if self._client is None or self._client_pid != pid:
            with self._lock:
                if self._client is None or self._client_pid != pid:
                    import boto3
                    from botocore.config import Config

                    # Path-style addressing for a custom endpoint: MinIO and most local servers
                    # do not serve bucket subdomains.
                    config = Config(
                        retries={"max_attempts": 3, "mode": "standard"},
                        s3={"addressing_style": "path" if self.endpoint_url else "auto"},
                    )
                    self._client = boto3.session.Session().client(
                        "s3",
                        endpoint_url=self.endpoint_url,
                        region_name=self.region,
                        config=config,
                    )
                    self._client_pid = pid
        return self._client

    def put(self, key: str, data: bytes, content_type: str) -> None:
        _checked_key(key)
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        _checked_key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(MISSING_MESSAGE, code="media_not_found") from exc
            raise
        return response["Body"].read()

    def delete(self, key: str) -> None:
        _checked_key(key)
        self.client.delete_object(Bucket=self.bucket, Key=key)


def storage_from_settings(settings: IntakeSettings) -> MediaStorage:
    """S3-compatible storage when ``MEDIA_S3_BUCKET`` is set, else files under the media folder."""
    if settings.media_s3_bucket:
        return S3Storage(
            settings.media_s3_bucket,
            endpoint_url=settings.media_s3_endpoint_url,
            region=settings.media_s3_region,
        )
    return LocalStorage(settings.media_path)
