"""FITS cutouts -> RGB (galaxy_morph.fits_image) and the FITS branch of galaxy_morph.imaging.

    .venv/bin/python -m pytest -q tests/test_fits_image.py
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from astropy.io import fits

from galaxy_morph.fits_image import decode_fits, fits_to_rgb, read_bands
from galaxy_morph.imaging import ImageError, ImageTooLarge, decode_image
from galaxy_morph.legacy_rgb import sdss_rgb, to_uint8
from tests.cutout_service import cube_to_fits, galaxy_cube


def hdul_bytes(*hdus) -> bytes:
    buf = io.BytesIO()
    fits.HDUList(list(hdus)).writeto(buf)
    return buf.getvalue()


def test_cube_renders_with_the_survey_mapping_north_up():
    cube = galaxy_cube(150.1, 2.2, 48)
    cube[:, 40:, :] += 0.5  # bright northern edge (high rows in FITS = north)
    rgb = np.asarray(decode_fits(cube_to_fits(cube)))
    assert rgb.shape == (48, 48, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, to_uint8(sdss_rgb(cube))[::-1])
    assert rgb[:8].mean() > rgb[-8:].mean(), "north (last FITS rows) is shown at the top"


def test_decode_image_takes_fits_like_the_jpeg_path():
    img = decode_image(cube_to_fits(galaxy_cube(10.0, 5.0, 32)))
    assert img.mode == "RGB" and img.size == (32, 32)


def test_band_order_comes_from_the_header():
    cube = galaxy_cube(1.0, 1.0, 32)
    zrg = cube_to_fits(cube[[2, 1, 0]], "zrg")
    assert np.array_equal(read_bands(zrg), cube)
    # four bands, as ls-dr10 gives where i exists: g, r, z are picked out
    griz = cube_to_fits(np.stack([cube[0], cube[1], cube[1], cube[2]]), "griz")
    assert np.array_equal(read_bands(griz), cube)


def test_one_hdu_per_band():
    cube = galaxy_cube(2.0, 2.0, 32)
    hdus = [fits.PrimaryHDU()]
    for band, plane in zip("zgr", cube[[2, 0, 1]]):
        h = fits.ImageHDU(plane)
        h.header["BAND"] = band
        hdus.append(h)
    assert np.array_equal(read_bands(hdul_bytes(*hdus)), cube)
    # no band keys: g, r, z in HDU order
    plain = hdul_bytes(fits.PrimaryHDU(cube[0]), fits.ImageHDU(cube[1]), fits.ImageHDU(cube[2]))
    assert np.array_equal(read_bands(plain), cube)


def test_nan_pixels_among_data_are_rendered_as_no_flux():
    cube = galaxy_cube(3.0, 3.0, 32)
    cube[:, :4, :4] = np.nan
    rgb = fits_to_rgb(cube_to_fits(cube))
    assert np.isfinite(rgb).all() and rgb.max() > 0


def overlap_false() -> bytes:
    h = fits.PrimaryHDU()
    h.header["OVERLAP"] = False
    return hdul_bytes(h)


BAD = {
    "empty header, OVERLAP = F": (overlap_false, "OVERLAP = F"),
    "no data at all": (lambda: hdul_bytes(fits.PrimaryHDU()), "no image data"),
    "NaN only": (lambda: cube_to_fits(np.full((3, 32, 32), np.nan)), "every pixel is NaN"),
    "all zero": (lambda: cube_to_fits(np.zeros((3, 32, 32))), "every pixel is 0"),
    "one band": (lambda: cube_to_fits(np.ones((32, 32))), "single-band"),
    "two bands": (lambda: cube_to_fits(np.ones((2, 32, 32)), "gr"), "missing band(s) z"),
    "4-D": (lambda: cube_to_fits(np.ones((1, 3, 32, 32)), "grz"), "wrong shape"),
    "3 planes of unknown bands": (lambda: cube_to_fits(np.ones((3, 32, 32)), "uvw"), "missing band(s)"),
    "too small": (lambda: cube_to_fits(np.ones((3, 4, 4))), "too small"),
    "truncated": (lambda: cube_to_fits(np.ones((3, 64, 64)))[:20000], "truncated"),
    "header only, cut short": (lambda: cube_to_fits(np.ones((3, 64, 64)))[:400], "corrupt"),
    "table, no image": (lambda: hdul_bytes(fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="a", format="E", array=np.ones(3))])), "no image data"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_fits_are_refused_with_a_message(name):
    make, words = BAD[name]
    with pytest.raises(ImageError) as e:
        decode_image(make())
    assert words in str(e.value)
    assert e.value.status == 400


def test_too_large_is_413_before_reading_the_pixels():
    big = cube_to_fits(np.ones((3, 300, 300), np.float32))
    with pytest.raises(ImageTooLarge) as e:
        decode_image(big, max_pixels=200 * 200)
    assert e.value.status == 413 and "too large" in str(e.value)


def huge_header_only() -> bytes:
    """A header that claims 5000 x 5000 x 3 float pixels, followed by one block: too large, not read."""
    h = fits.Header()
    for k, v in (("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 3), ("NAXIS1", 5000), ("NAXIS2", 5000),
                 ("NAXIS3", 3)):
        h[k] = v
    return h.tostring().encode() + b"\0" * 2880


def test_a_header_claiming_too_many_pixels_is_413():
    with pytest.raises(ImageTooLarge, match="5000x5000"):
        decode_image(huge_header_only())
