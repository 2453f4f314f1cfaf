"""Small real images for the dataset tests, made with Pillow."""

import io
from pathlib import Path

import pytest
from PIL import Image


def _png(shade: int, mode: str = "RGB", size: tuple[int, int] = (6, 5), image_format: str = "PNG") -> bytes:
    color = shade if mode == "L" else (shade, 255 - shade, (shade * 7) % 256) + ((200,) if mode == "RGBA" else ())
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format=image_format)
    return buffer.getvalue()


@pytest.fixture
def png_bytes():
    """Factory: encoded bytes of a small solid image whose colour depends on ``shade``."""
    return _png


@pytest.fixture
def write_png(tmp_path):
    """Factory: write a small PNG under a folder and return its path."""

    def write(folder: Path, name: str, shade: int) -> Path:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(shade))
        return path

    return write
