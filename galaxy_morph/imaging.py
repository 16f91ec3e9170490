"""Decoding untrusted image bytes into RGB PIL images, with errors that say what was wrong.

Shared by the TorchServe handlers, the bulk classifier and the dashboard, so that every entry
point accepts and refuses the same inputs: JPEG or PNG, 8 or 16 bit, greyscale, RGB or RGBA, and
g, r, z FITS cutouts, rendered with the Legacy Surveys' colours (galaxy_morph.fits_image).
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

MAX_PIXELS = 4096 * 4096  # Galaxy cutouts are ~256 px; a bigger image is a mistake or an attack
ALLOWED_FORMATS = ("JPEG", "PNG")


class ImageError(ValueError):
    """Bytes that cannot be used as an image; the message is safe to show a client.

    `status` is the HTTP status a server answers it with."""
    status = 400


class ImageTooLarge(ImageError):
    status = 413


FITS_SIGNATURE = b"SIMPLE  ="  # the first header card of every FITS file
IMAGE_SIGNATURES = (b"\xff\xd8", b"\x89PNG", FITS_SIGNATURE)  # JPEG, PNG, FITS


def is_fits(data: bytes) -> bool:
    """True for bytes that start like a FITS file (the first header card is SIMPLE = T)."""
    return bytes(data[:len(FITS_SIGNATURE)]) == FITS_SIGNATURE


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    if is_fits(data):  # a survey cutout
        from galaxy_morph.fits_image import decode_fits

        return decode_fits(data, max_pixels)
    img = probe_image(data, max_pixels)
    try:
        img.load()
    except Exception:
        raise ImageError("truncated or corrupt image: the bytes end before the image does") from None
    return to_rgb8(img)


def probe_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The checks of decode_image that need only the image's header (format, size); the pixels
    are not decoded (a FITS cutout's are: its header says too little). ImageError as decode_image."""
    if not data:
        raise ImageError("empty image: the request carried no bytes")
    if is_fits(data):  # a survey cutout
        from galaxy_morph.fits_image import decode_fits

        return decode_fits(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombWarning:
        raise ImageTooLarge(f"image too large: over {max_pixels} pixels") from None
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"image too large: over {max_pixels} pixels") from None
    except Exception:
        raise ImageError("not an image: expected JPEG, PNG or FITS bytes") from None
    if img.format not in ALLOWED_FORMATS:
        raise ImageError(f"unsupported image format {img.format}: send JPEG or PNG")
    w, h = img.size
    if w * h > max_pixels:
        raise ImageTooLarge(f"image too large: {w}x{h} is over the limit of {max_pixels} pixels")
    if w < 8 or h < 8:
        raise ImageError(f"image too small: {w}x{h}, need at least 8x8 pixels")
    return img


def decode_to_tensor(data: bytes, max_pixels: int = MAX_PIXELS, device="cpu"):
    """decode_image as a uint8 CHW RGB tensor on `device`. Complete 8-bit RGB or greyscale JPEGs
    (the survey cutouts) are checked from their header only and decoded by
    torchvision.io.decode_jpeg on that device (nvJPEG on a GPU); anything else, and any JPEG that
    decoder refuses, goes through decode_image and is copied over."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = bytes(data)
    if data[:2] == b"\xff\xd8" and data.rstrip(b"\0")[-2:] == b"\xff\xd9":  # a whole JPEG
        try:
            header = Image.open(io.BytesIO(data))  # reads the header, not the pixels
            w, h = header.size
            usable = header.format == "JPEG" and header.mode in ("RGB", "L") and w >= 8 and h >= 8
        except Exception:
            usable = False
        if usable and w * h > max_pixels:
            raise ImageTooLarge(f"image too large: {w}x{h} is over the limit of {max_pixels} pixels")
        if usable:
            try:
                return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                   mode=ImageReadMode.RGB, device=device)
            except RuntimeError:
                pass  # e.g. a progressive or arithmetic-coded JPEG nvJPEG does not take: PIL's way
    img = decode_image(data, max_pixels)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).to(device)


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; 16-bit images are scaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        img = Image.fromarray(((arr - lo) / ((hi - lo) or 1.0) * 255.0).astype(np.uint8))
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on black: the sky behind a transparent cutout is dark, not white.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(bg, rgba)
    return img.convert("RGB")
