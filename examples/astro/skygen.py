"""A synthetic radio sky: images with pixel masks, for training and testing the segmenter.

Real survey cut-outs (ASKAP/EMU, MeerKAT, LOFAR) cannot ship with the repository and come
without pixel-level labels, so the example makes its own. Every image is what a radio
interferometer's restored image looks like to the eye, in the units it is stored in:

* **noise**: Gaussian, correlated on the scale of the restoring beam (white noise convolved
  with the beam, the way the CLEAN beam correlates real image noise), with an rms drawn per
  image between 20 and 100 uJy/beam;
* **point sources** (class ``point``): unresolved or barely resolved sources, a Gaussian of
  the beam's size, with peak signal-to-noise ratios from a power law (many faint, few bright);
* **extended sources** (class ``extended``): radio galaxies with two lobes (elliptical
  Gaussians, asymmetric, on either side of an often faint core, sometimes joined by a jet),
  and resolved single-component galaxies (an elliptical Gaussian several beams across);
* **artefacts** (class ``artefact``): sidelobe *rings* around a very bright source -- a
  radially oscillating, decaying pattern with spokes, positive and negative, as calibration
  errors leave them -- and *stripes*: a plane wave under a smooth envelope, as residual RFI or
  a bad baseline leaves them.

The mask gives each pixel the class of what dominates it. A source covers the pixels where
its own model is above twice the noise (what a person drawing masks would call "the source",
which is why faint sources get small masks); an artefact covers the region where its
envelope is above twice the noise. Where classes overlap, sources win over artefacts
(a source seen through a ring is still a source) and point sources win over extended ones.

Files: :func:`write_dataset` writes FITS images with a celestial WCS (``RA---SIN`` /
``DEC--SIN``, 2 arcsec pixels), ``BUNIT = 'JY/BEAM'`` and the beam (``BMAJ``/``BMIN``/
``BPA``). The ground truth goes to a *hidden* directory ``.truth/`` inside the dataset:
hubserve's batch jobs skip hidden files and directories, so a dataset folder can be handed to
``segment_folder`` as it is, masks and all. :func:`read_image` reads FITS (also with the
degenerate frequency and Stokes axes real radio images carry), PNG and ``.npy`` files.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CLASSES",
    "PIXEL_ARCSEC",
    "Sky",
    "SkyObject",
    "celestial_header",
    "make_image",
    "make_sky",
    "normalise",
    "read_image",
    "write_dataset",
]

CLASSES = ("background", "point", "extended", "artefact")
BACKGROUND, POINT, EXTENDED, ARTEFACT = range(4)
#: Pixel size of the generated images (arcsec) and restoring beam FWHM (pixels).
PIXEL_ARCSEC = 2.0
BEAM_FWHM_PX = 3.0
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
#: A pixel belongs to a component where its model exceeds this many noise sigmas.
MASK_SNR = 2.0
TRUTH_DIR = ".truth"
IMAGE_SUFFIXES = (".fits", ".fit", ".fts", ".png", ".npy")


@dataclass(frozen=True)
class SkyObject:
    """One generated object: its class, pixel position (x = column, y = row) and strength.

    ``snr`` is the peak signal-to-noise ratio (for artefacts, of the envelope).
    """

    cls: str
    x: float
    y: float
    snr: float
    kind: str = ""


@dataclass
class Sky:
    """An image in noise units (rms 1), its class mask and the objects placed in it."""

    image: np.ndarray
    mask: np.ndarray
    objects: list[SkyObject] = field(default_factory=list)


# -- building blocks --------------------------------------------------------------------------


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return xx, yy


def _gaussian(
    xx: np.ndarray,
    yy: np.ndarray,
    x0: float,
    y0: float,
    sigma_major: float,
    sigma_minor: float,
    angle: float,
) -> np.ndarray:
    """An elliptical Gaussian of peak 1, its major axis at ``angle`` radians from +x."""
    dx, dy = xx - x0, yy - y0
    cos, sin = math.cos(angle), math.sin(angle)
    along = dx * cos + dy * sin
    across = -dx * sin + dy * cos
    r2 = (along / sigma_major) ** 2 + (across / sigma_minor) ** 2
    return np.exp(-0.5 * r2).astype(np.float32)


def _beam_noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    """White noise convolved with a Gaussian beam (in Fourier space), rescaled to rms 1."""
    white = rng.standard_normal((size, size)).astype(np.float32)
    freq = np.fft.fftfreq(size).astype(np.float32)
    kernel = np.exp(-2.0 * (math.pi * sigma_px) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    noise = np.fft.irfft2(np.fft.rfft2(white) * kernel[:, : size // 2 + 1], s=(size, size)).astype(
        np.float32
    )
    return noise / float(noise.std())


def _power_law(rng: np.random.Generator, low: float, high: float, index: float) -> float:
    """A value in ``[low, high]`` with density ~ value**-(index + 1): many faint, few bright."""
    value = low * (1.0 - rng.random()) ** (-1.0 / index)
    return float(min(value, high))


def _paint(mask: np.ndarray, region: np.ndarray, cls: int, over: Sequence[int]) -> None:
    """Set ``region`` pixels to ``cls`` where the mask holds one of the classes in ``over``."""
    mask[region & np.isin(mask, over)] = cls


# -- the components ---------------------------------------------------------------------------


def _point_source(
    rng: np.random.Generator,
    xx: np.ndarray,
    yy: np.ndarray,
    size: int,
    snr: float | None = None,
    at: tuple[float, float] | None = None,
) -> tuple[np.ndarray, SkyObject]:
    x0, y0 = at if at is not None else tuple(rng.uniform(3, size - 3, 2))
    peak = snr if snr is not None else _power_law(rng, 6.0, 400.0, 1.2)
    sigma = BEAM_FWHM_PX * _FWHM_TO_SIGMA * rng.uniform(1.0, 1.3)  # barely resolved at most
    model = peak * _gaussian(xx, yy, x0, y0, sigma, sigma * rng.uniform(0.85, 1.0), 0.0)
    return model, SkyObject("point", float(x0), float(y0), peak, "point")


def _double_lobed(
    rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, size: int
) -> tuple[np.ndarray, SkyObject]:
    """A radio galaxy: core, two asymmetric lobes along a random axis, maybe a faint jet."""
    margin = min(40.0, size / 4)  # lobes mostly inside the field
    x0, y0 = rng.uniform(margin, size - margin, 2)
    axis = rng.uniform(0, math.pi)
    separation = rng.uniform(10, 32)
    model = np.zeros_like(xx)
    brightest = 0.0
    for side in (1.0, -1.0):
        distance = separation * rng.uniform(0.75, 1.25)
        lx = x0 + side * distance * math.cos(axis)
        ly = y0 + side * distance * math.sin(axis)
        major, minor = rng.uniform(3.0, 7.0), rng.uniform(2.0, 3.5)
        lobe_angle = axis + rng.uniform(-0.4, 0.4)
        peak = rng.uniform(4.0, 30.0)
        brightest = max(brightest, peak)
        model += peak * _gaussian(xx, yy, lx, ly, major, minor, lobe_angle)
        if rng.random() < 0.5:  # a jet: small blobs from the core towards the lobe
            for t in np.linspace(0.2, 0.8, 5):
                jx = x0 + side * t * distance * math.cos(axis)
                jy = y0 + side * t * distance * math.sin(axis)
                model += 0.35 * peak * _gaussian(xx, yy, jx, jy, 1.8, 1.2, axis)
    core = rng.uniform(0.0, 15.0)
    sigma = BEAM_FWHM_PX * _FWHM_TO_SIGMA
    model += core * _gaussian(xx, yy, x0, y0, sigma, sigma, 0.0)
    return model, SkyObject("extended", float(x0), float(y0), brightest, "double-lobed")


def _resolved_galaxy(
    rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, size: int
) -> tuple[np.ndarray, SkyObject]:
    """A resolved galaxy: one smooth elliptical component several beams across."""
    margin = min(15.0, size / 4)
    x0, y0 = rng.uniform(margin, size - margin, 2)
    major = rng.uniform(4.0, 9.0)
    minor = major * rng.uniform(0.4, 0.9)
    peak = rng.uniform(4.0, 25.0)
    model = peak * _gaussian(xx, yy, x0, y0, major, minor, rng.uniform(0, math.pi))
    return model, SkyObject("extended", float(x0), float(y0), peak, "resolved")


def _sidelobe_rings(
    rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, SkyObject, np.ndarray, SkyObject]:
    """A very bright source and the rings its calibration errors leave around it.

    Returns the ring pattern, the artefact region, its object, and the bright source's model
    and object (the source itself is a point source, not an artefact).
    """
    x0, y0 = rng.uniform(size * 0.2, size * 0.8, 2)
    source_snr = rng.uniform(300.0, 3000.0)
    source, source_obj = _point_source(rng, xx, yy, size, snr=source_snr, at=(x0, y0))
    dx, dy = xx - x0, yy - y0
    radius = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    period = rng.uniform(5.0, 10.0)
    decay = rng.uniform(15.0, 40.0)
    amplitude = rng.uniform(8.0, 30.0)  # noise units at the inner edge
    inner = 2.0 * BEAM_FWHM_PX
    spokes = 1.0 + 0.3 * np.cos(rng.integers(3, 7) * theta + rng.uniform(0, 2 * math.pi))
    envelope = amplitude * np.exp(-(radius - inner) / decay) * (radius >= inner)
    phase = rng.uniform(0, 2 * math.pi)
    pattern = (envelope * spokes * np.cos(2 * math.pi * radius / period + phase)).astype(np.float32)
    region = envelope * spokes > MASK_SNR
    ring = SkyObject("artefact", float(x0), float(y0), float(amplitude), "rings")
    return pattern, region, ring, source, source_obj


def _stripes(
    rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, SkyObject]:
    """A plane wave under a smooth elliptical envelope."""
    x0, y0 = rng.uniform(size * 0.15, size * 0.85, 2)
    angle = rng.uniform(0, math.pi)
    wavelength = rng.uniform(4.0, 12.0)
    amplitude = rng.uniform(4.0, 10.0)
    envelope = amplitude * _gaussian(
        xx, yy, x0, y0, rng.uniform(20, 50), rng.uniform(12, 30), rng.uniform(0, math.pi)
    )
    wave = np.cos(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / wavelength)
    return (
        (envelope * wave).astype(np.float32),
        envelope > MASK_SNR,
        SkyObject("artefact", float(x0), float(y0), float(amplitude), "stripes"),
    )


# -- images -----------------------------------------------------------------------------------


def make_sky(rng: np.random.Generator, size: int = 256) -> Sky:
    """One synthetic field in noise units (rms 1 before sources), its mask and objects.

    The number of objects scales with the area, so crops and small images look alike.
    """
    xx, yy = _grid(size)
    scale = (size / 256) ** 2
    image = _beam_noise(rng, size, BEAM_FWHM_PX * _FWHM_TO_SIGMA)
    mask = np.zeros((size, size), np.uint8)
    objects: list[SkyObject] = []
    sources: list[tuple[np.ndarray, int]] = []  # painted after the artefacts

    if rng.random() < 0.5 * min(1.0, 2 * scale):
        pattern, region, ring, source, source_obj = _sidelobe_rings(rng, xx, yy, size)
        image += pattern
        _paint(mask, region, ARTEFACT, over=(BACKGROUND,))
        objects += [ring, source_obj]
        sources.append((source, POINT))
    if rng.random() < 0.35 * min(1.0, 2 * scale):
        pattern, region, stripe = _stripes(rng, xx, yy, size)
        image += pattern
        _paint(mask, region, ARTEFACT, over=(BACKGROUND,))
        objects.append(stripe)
    for _ in range(rng.poisson(2.0 * scale)):
        maker = _double_lobed if rng.random() < 0.65 else _resolved_galaxy
        model, obj = maker(rng, xx, yy, size)
        sources.append((model, EXTENDED))
        objects.append(obj)
    for _ in range(rng.poisson(9.0 * scale)):
        model, obj = _point_source(rng, xx, yy, size)
        sources.append((model, POINT))
        objects.append(obj)

    # Extended first, then points on top: a point source in front of a lobe stays a point.
    for wanted in (EXTENDED, POINT):
        for model, cls in sources:
            if cls == wanted:
                image += model
                over = (BACKGROUND, ARTEFACT) if cls == EXTENDED else tuple(range(4))
                _paint(mask, model > MASK_SNR, cls, over=over)
    return Sky(image.astype(np.float32), mask, objects)


def make_image(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(image float32 HxW, mask uint8 HxW)`` of one synthetic field (see :func:`make_sky`)."""
    sky = make_sky(rng, size)
    return sky.image, sky.mask


def normalise(image: np.ndarray) -> np.ndarray:
    """What the network sees: the image in robust noise units, its dynamic range compressed.

    Radio images come in arbitrary units (Jy/beam, counts of a PNG) and with peak-to-noise
    ratios of 10^4, so the median is subtracted, the result divided by the noise estimated
    from the median absolute deviation (sources barely move it), and ``asinh(x / 3)`` keeps the
    noise nearly linear while bright sources stop dominating. Blanked (NaN) pixels become 0.
    """
    raw = np.asarray(image, dtype=np.float32)
    valid = np.isfinite(raw)
    data = np.where(valid, raw, np.float32(0.0))
    finite = data[valid]
    if finite.size == 0:
        return np.zeros_like(data)
    centre = float(np.median(finite))
    sigma = 1.4826 * float(np.median(np.abs(finite - centre)))
    if not sigma > 0:
        sigma = float(finite.std()) or 1.0
    return np.arcsinh((data - centre) / (3.0 * sigma)).astype(np.float32)


# -- files ------------------------------------------------------------------------------------


def celestial_header(
    size_x: int, size_y: int, ra: float, dec: float, pixel_arcsec: float = PIXEL_ARCSEC
) -> Any:
    """A FITS header with a ``SIN`` projection centred on ``(ra, dec)`` degrees."""
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crpix = [size_x / 2 + 0.5, size_y / 2 + 0.5]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.cdelt = [-pixel_arcsec / 3600, pixel_arcsec / 3600]
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.equinox = 2000.0
    return wcs.to_header()


def _write_fits(path: Path, data: np.ndarray, header: Any) -> None:
    from astropy.io import fits

    fits.PrimaryHDU(data=data, header=header).writeto(path, overwrite=True)


def _write_png(path: Path, image: np.ndarray) -> None:
    """A 16-bit greyscale PNG, linear between the image's minimum and maximum.

    Linear, so the robust normalisation of :func:`normalise` sees the same image (65536 levels
    leave the noise several hundred levels wide for the peak-to-noise ratios generated here).
    """
    from PIL import Image

    low, high = float(image.min()), float(image.max())
    scaled = (image - low) / (high - low or 1.0) * 65535.0
    Image.fromarray(np.round(scaled).astype(np.uint16)).save(path)


def write_dataset(
    directory: str | Path,
    n: int,
    size: int = 256,
    seed: int = 0,
    formats: Iterable[str] = ("fits",),
    *,
    truth_dir: str | Path | None = None,
) -> list[Path]:
    """Write ``n`` synthetic fields into ``directory``; returns the image paths written.

    Images are ``sky_0000.fits`` (and/or ``.png``/``.npy``: ``formats`` cycles through the
    formats given, one file per field), in Jy/beam. The ground truth goes to ``truth_dir``
    (default: ``directory/.truth``, hidden, so batch jobs over ``directory`` skip it):
    ``<name>.mask.fits`` per field (uint8 classes, same WCS) and ``truth.json`` (the objects
    of every field, in pixel coordinates, with ``classes``).
    """
    root = Path(directory)
    truth = Path(truth_dir) if truth_dir is not None else root / TRUTH_DIR
    root.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    kinds = list(formats)
    unknown = set(kinds) - {"fits", "png", "npy"}
    if not kinds or unknown:
        raise ValueError(f"formats must be among fits, png, npy; got {kinds}")
    rng = np.random.default_rng(seed)
    written: list[Path] = []
    catalogue: dict[str, Any] = {"classes": list(CLASSES), "fields": {}}
    for index in range(n):
        sky = make_sky(rng, size)
        rms = float(rng.uniform(20e-6, 100e-6))  # Jy/beam
        image = (sky.image * rms).astype(np.float32)
        ra, dec = float(rng.uniform(0, 360)), float(rng.uniform(-80, 10))
        header = celestial_header(size, size, ra, dec)
        kind = kinds[index % len(kinds)]
        name = f"sky_{index:04d}"
        path = root / f"{name}.{kind}"
        if kind == "fits":
            data_header = header.copy()
            beam_deg = BEAM_FWHM_PX * PIXEL_ARCSEC / 3600
            data_header["BMAJ"] = (beam_deg, "restoring beam major axis FWHM (deg)")
            data_header["BMIN"] = (beam_deg, "restoring beam minor axis FWHM (deg)")
            data_header["BPA"] = (0.0, "restoring beam position angle (deg)")
            data_header["BUNIT"] = "JY/BEAM"
            data_header["OBJECT"] = name
            data_header["TELESCOP"] = "SYNTHETIC"
            _write_fits(path, image, data_header)
        elif kind == "png":
            _write_png(path, image)
        else:
            np.save(path, image)
        _write_fits(truth / f"{name}.mask.fits", sky.mask, header)
        catalogue["fields"][path.name] = {
            "rms": rms,
            "ra": ra,
            "dec": dec,
            "objects": [asdict(obj) for obj in sky.objects],
        }
        written.append(path)
    (truth / "truth.json").write_text(json.dumps(catalogue, indent=1) + "\n")
    return written


def read_image(path: str | Path) -> tuple[np.ndarray, Any | None]:
    """``(image float32 HxW, FITS header or None)`` of a ``.fits``/``.png``/``.npy`` file.

    FITS: the first HDU with an image; degenerate axes (the frequency and Stokes axes of
    radio images) are dropped, and the header returned is the celestial part of its WCS plus
    the beam and unit keywords, so masks written with it line up with the input. PNG: grey
    levels (colour images are averaged over their channels). ``.npy``: a 2-D numeric array,
    never pickles. Anything else, or a damaged file, raises ``ValueError``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".fits", ".fit", ".fts"):
        return _read_fits(path)
    if suffix == ".png":
        image = _read_png(path)
    elif suffix == ".npy":
        try:
            image = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"{path.name}: not a readable .npy array ({exc})") from None
    else:
        raise ValueError(f"{path.name}: unsupported file type (use one of {IMAGE_SUFFIXES})")
    return _as_2d(image, path.name), None


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("1", "L", "I", "F") or im.mode.startswith("I;16"):
                return np.asarray(im, dtype=np.float32)
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
            grey: np.ndarray = rgb.mean(axis=2)
            return grey
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{path.name}: not a readable PNG ({exc})") from None


def _read_fits(path: Path) -> tuple[np.ndarray, Any]:
    from astropy.io import fits
    from astropy.io.fits.verify import VerifyWarning
    from astropy.utils.exceptions import AstropyUserWarning
    from astropy.wcs import WCS, FITSFixedWarning

    # Files from the wild carry non-standard keywords that astropy repairs and warns about;
    # a repaired header is what we want, and the warnings would only clutter the job log.
    with warnings.catch_warnings():
        for category in (FITSFixedWarning, VerifyWarning, AstropyUserWarning):
            warnings.simplefilter("ignore", category)
        try:
            with fits.open(path, memmap=False) as hdus:
                found = [h for h in hdus if h.is_image and h.header.get("NAXIS", 0) >= 2]
                data = np.asarray(found[0].data, dtype=np.float32) if found else None
                source_header = found[0].header if found else None
                header = WCS(source_header).celestial.to_header() if found else None
        except (OSError, TypeError, ValueError, KeyError, IndexError, MemoryError) as exc:
            # Truncated data shows up as a reshape ValueError, a damaged header as OSError.
            raise ValueError(f"{path.name}: not a readable FITS file ({exc})") from None
    if data is None or source_header is None or header is None:
        raise ValueError(f"{path.name}: no image in this FITS file")
    for key in ("BMAJ", "BMIN", "BPA", "BUNIT", "OBJECT", "TELESCOP"):
        if key in source_header:
            header[key] = source_header[key]
    image = _as_2d(data, path.name)
    if not header.get("CTYPE1"):
        return image, None
    return image, header


def _as_2d(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected a numeric image, got dtype {array.dtype}")
    squeezed = np.squeeze(array)
    if squeezed.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D image, got shape {array.shape}")
    if min(squeezed.shape) < 8:
        raise ValueError(f"{name}: image {squeezed.shape} is too small (8x8 at least)")
    return squeezed.astype(np.float32)
