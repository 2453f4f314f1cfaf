"""Image decoding, normalisation to PNG, and the pixel digest used in fingerprints."""

from __future__ import annotations

import hashlib
import io
import warnings

from PIL import Image

from mars_core.data.schema import PNG_SIGNATURE

STORED_MODES = ("L", "RGB")


class ImageDecodeError(Exception):
    """An image could not be decoded; the message is the reason, for a bad-row report."""


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes fully (not lazily), so a truncated file fails here.

    Raises ``ImageDecodeError`` for empty, truncated or unreadable bytes and
    for images above Pillow's decompression-bomb limit.
    """
    if not data:
        raise ImageDecodeError("image bytes are empty")
    try:
        with warnings.catch_warnings():
            # Pillow warns before it raises for large images; the limit itself is an error below.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode image: {type(exc).__name__}: {exc}") from exc
    return image


def to_stored_mode(image: Image.Image) -> Image.Image:
    """Convert to mode "L" (grayscale) or "RGB"; an alpha channel is dropped.

    NOTE: 16-bit and float grayscale images are clipped to 0..255 by Pillow,
    not rescaled, so such images should be scaled to 8 bits before conversion.
    """
    if image.mode in STORED_MODES:
        return image
    if image.mode in ("1", "LA", "I;16", "I", "F"):
        return image.convert("L")
    return image.convert("RGB")


def encode_png(image: Image.Image) -> bytes:
    """Encode as PNG with fixed settings, so equal pixels give equal bytes with one Pillow build."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def pixel_digest(image: Image.Image) -> bytes:
    """sha256 over mode, size and raw pixels: the image's share of a content fingerprint.

    Hashing pixels instead of PNG bytes keeps the fingerprint the same when
    another zlib or Pillow version encodes the same image differently.
    """
    sha = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    sha.update(image.tobytes())
    return sha.digest()


def normalize_image_bytes(data: bytes) -> tuple[bytes, bytes]:
    """Return ``(png_bytes, pixel_digest)`` for stored image bytes of any Pillow format.

    PNG input already in mode "L" or "RGB" is kept byte for byte; anything
    else is converted and re-encoded as PNG.
    """
    image = decode_image(data)
    stored = to_stored_mode(image)
    if data.startswith(PNG_SIGNATURE) and stored is image:
        return data, pixel_digest(image)
    return encode_png(stored), pixel_digest(stored)
