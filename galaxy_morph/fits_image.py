"""FITS cutouts in the survey's g, r, z bands -> the RGB image the Legacy Surveys viewer would show.

Accepts what the Legacy Surveys cutout service returns for `cutout.fits?...&bands=grz`: one 3-D
primary HDU (bands, H, W) whose header names the bands (`BANDS = 'grz'`, `BAND0 = 'g'`, ...), and
also one 2-D image HDU per band (band named by `BAND` or `FILTER`, else g, r, z in HDU order).
Pixels are fluxes (nanomaggies for survey data); they go through galaxy_morph.legacy_rgb.sdss_rgb,
the survey's own asinh mapping, and are flipped so that north is up as in the viewer's JPEGs
(FITS row 1 is the southern edge). Reading is astropy's; nothing here parses FITS by hand.

    from galaxy_morph.fits_image import is_fits, decode_fits
    img = decode_fits(open("cutout.fits", "rb").read())     # PIL RGB image, or ImageError

Refused with galaxy_morph.imaging.ImageError (a message safe to show a client; ImageTooLarge, HTTP
413, for too many pixels): not FITS, truncated
or corrupt, no image data (the service's answer outside the footprint: a header with OVERLAP = F),
a single band or missing g/r/z, wrong number of axes, too small or too large, no finite pixel, or
every pixel zero (a blank cutout outside the footprint). NaN pixels among finite ones become 0.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from galaxy_morph.imaging import MAX_PIXELS, ImageError, ImageTooLarge, is_fits
from galaxy_morph.legacy_rgb import BANDS, sdss_rgb, to_uint8

MIN_SIZE = 8


def read_bands(data: bytes, bands=BANDS, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """FITS bytes -> float32 (len(bands), H, W) band images in the order of `bands`."""
    from astropy.io import fits

    if not data:
        raise ImageError("empty FITS: the request carried no bytes")
    if not is_fits(data):
        raise ImageError("not a FITS file: it does not start with SIMPLE =")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(io.BytesIO(bytes(data)), memmap=False, lazy_load_hdus=False)
        except Exception:
            raise ImageError("corrupt FITS file: astropy cannot read its headers") from None
        try:
            return _bands_from_hdus(hdul, bands, max_pixels, caught)
        finally:
            hdul.close()


def _bands_from_hdus(hdul, bands, max_pixels: int, caught) -> np.ndarray:
    images = [h for h in hdul if getattr(h, "is_image", False) and h.header.get("NAXIS", 0) > 0]
    if not images:
        if hdul[0].header.get("OVERLAP") is False:
            raise ImageError("no image data: the cutout does not overlap the survey (OVERLAP = F)")
        raise ImageError("no image data in the FITS file (no HDU with pixels)")
    for h in images:
        shape = tuple(int(h.header.get(f"NAXIS{i}", 0)) for i in range(h.header["NAXIS"], 0, -1))
        if len(shape) >= 2 and shape[-1] * shape[-2] > max_pixels:
            raise ImageTooLarge(f"image too large: {shape[-1]}x{shape[-2]} pixels per band is over the "
                             f"limit of {max_pixels} pixels")
    if any("truncated" in str(w.message) for w in caught):
        raise ImageError("truncated FITS file: the bytes end before the data do")
    first = images[0]
    if first.header["NAXIS"] == 3 or len(images) == 1:
        cube = _array(first)
        if cube.ndim == 2:
            raise ImageError(f"a single-band image ({cube.shape[1]}x{cube.shape[0]}): need the "
                             f"{', '.join(bands)} bands, as cutout.fits?...&bands={''.join(bands)} returns")
        if cube.ndim != 3:
            raise ImageError(f"wrong shape {cube.shape}: expected (bands, H, W)")
        names = _cube_band_names(first.header, cube.shape[0])
        planes = dict(zip(names, cube)) if names else None
        if planes is None:
            if cube.shape[0] != len(bands):
                raise ImageError(f"wrong shape {cube.shape}: expected ({len(bands)}, H, W) in "
                                 f"{', '.join(bands)} order, or a BANDS header naming the planes")
            planes = dict(zip(bands, cube))
    else:
        planes = {}
        for k, h in enumerate(images):
            arr = _array(h)
            if arr.ndim != 2:
                raise ImageError(f"HDU {k} has shape {arr.shape}: one 2-D image per band expected")
            name = str(h.header.get("BAND", h.header.get("FILTER", ""))).strip().lower()[:1]
            planes[name or (bands[k] if k < len(bands) else f"#{k}")] = arr
    missing = [b for b in bands if b not in planes]
    if missing:
        raise ImageError(f"missing band(s) {', '.join(missing)}: the file has "
                         f"{', '.join(sorted(planes)) or 'none'}; need {', '.join(bands)}")
    shapes = {planes[b].shape for b in bands}
    if len(shapes) != 1:
        raise ImageError(f"bands differ in shape: {sorted(shapes)}")
    out = np.stack([planes[b] for b in bands]).astype(np.float32, copy=False)
    h, w = out.shape[1:]
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ImageError(f"image too small: {w}x{h}, need at least {MIN_SIZE}x{MIN_SIZE} pixels")
    return out


def _array(hdu) -> np.ndarray:
    try:
        arr = hdu.data
    except Exception:
        raise ImageError("truncated or corrupt FITS data") from None
    if arr is None:
        raise ImageError("no image data in the FITS file")
    if not np.issubdtype(arr.dtype, np.number):
        raise ImageError(f"FITS data of type {arr.dtype} is not an image")
    return np.asarray(arr, np.float32)


def _cube_band_names(header, n: int) -> list[str] | None:
    """Band of each plane from BANDS = 'grz' or BAND0.. keys; None when the header does not say."""
    names = [str(header.get(f"BAND{i}", "")).strip().lower() for i in range(n)]
    if all(names) and len(set(names)) == n:
        return names
    bands = str(header.get("BANDS", "")).strip().lower()
    if len(bands) == n and len(set(bands)) == n:
        return list(bands)
    return None


def check_signal(cube: np.ndarray) -> np.ndarray:
    """Refuse cutouts with no usable pixel; NaN and inf among finite pixels become 0 (no flux)."""
    finite = np.isfinite(cube)
    if not finite.any():
        raise ImageError("no data: every pixel is NaN (the position is outside the survey footprint?)")
    cube = np.where(finite, cube, np.float32(0))
    if not np.any(cube):
        raise ImageError("no data: every pixel is 0 (a blank cutout: outside the survey footprint?)")
    return cube


def fits_to_rgb(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """FITS bytes -> uint8 (H, W, 3), north up, rendered with the survey's g, r, z mapping."""
    cube = check_signal(read_bands(data, BANDS, max_pixels))
    return np.ascontiguousarray(to_uint8(sdss_rgb(cube))[::-1])


def decode_fits(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """FITS bytes -> RGB PIL image; ImageError says what was wrong."""
    return Image.fromarray(fits_to_rgb(data, max_pixels), "RGB")
