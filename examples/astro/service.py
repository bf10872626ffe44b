"""The hubserve service of the astronomy example: segment radio images, one or a folder.

Two APIs over the FC-DenseNet trained by ``train.py`` (weights shipped in ``weights/``):

* ``segment`` -- raw images in, class masks out: ``float32 (n, H, W)`` or ``(n, 1, H, W)``
  to ``uint8 (n, H, W)`` with the classes of :data:`skygen.CLASSES` (0 background, 1 point
  source, 2 extended source, 3 artefact). Batchable: the runtime merges concurrent requests
  of the same image size into one forward pass.
* ``segment_folder`` -- a *path API*: ``POST /jobs/segment_folder {"input": ..., "output":
  ...}`` runs it over every file of a local folder, ``s3://`` prefix or ``webdav://``
  collection, with progress in ``GET /jobs/<id>``. For each input ``<name>.fits`` (or
  ``.png``/``.npy``) it publishes, in the output folder ``<name>/``:

  - ``<name>.mask.fits``: the class mask (uint8) with the input's celestial WCS, so it
    overlays the image in DS9, CARTA or astropy; the class names are in ``CLASS0..3``;
  - ``<name>.png``: a preview, the image (asinh stretch) and the same image with the mask
    over it;
  - ``catalogue.csv`` and ``catalogue.json``: one row per detected object (connected
    component of a class): class, pixel centroid, RA/Dec when the image has a WCS, area,
    peak, flux (and in Jy for Jy/beam images with a beam), confidence, bounding box.

  Its return value (in the job status and ``_job.json``) holds the same rows, so
  ``catalogue.rows_from_job(status)`` gives the catalogue of the whole folder without
  downloading anything; ``catalogue.collect_catalogues(local_output)`` merges the files.
  A file that cannot be read (not an image, damaged) fails alone: the job records its error
  and goes on with the next file.

Both refuse bad input with :class:`~model_runtime.InvalidInput`, so a caller gets a 422 with
the reason (and a job item its message) rather than a 500.

Every image is normalised on its own (robust noise estimate, see :func:`skygen.normalise`),
so the units do not matter: Jy/beam, mJy/beam or the grey levels of a PNG. Images larger than
:data:`TILE` pixels on a side are segmented in overlapping tiles, which keeps memory flat for
survey-sized mosaics; the overlap gives every tile's kept centre its full context.

Package it with ``build_bundle("examples/astro/service.py:service")``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from catalogue import measure_objects, write_catalogue
from skygen import CLASSES, normalise, read_image
from train import load_model

from model_runtime import InvalidInput, Service, kinds

#: Images with a side above this are segmented in tiles of this size...
TILE = 512
#: ... each seen with this many pixels of context on every side.
TILE_MARGIN = 48
#: Class colours of the previews (RGB): none, red, cyan, yellow.
PALETTE = ((0, 0, 0), (255, 64, 64), (64, 200, 255), (255, 220, 0))
#: Longest side of a preview panel; larger images are subsampled.
PREVIEW_MAX = 1024

net = load_model()

service = Service(
    "astro-segmenter",
    models={"net": net},
    description=(
        "Semantic segmentation of radio-astronomy images (FC-DenseNet): point sources,"
        " extended sources and artefacts; a folder of FITS/PNG/NumPy images in, masks with"
        " WCS, previews and a catalogue out."
    ),
    labels={"example": "astro", "task": "segmentation"},
    requirements=["astropy>=6"],
)


def _probabilities(batch: np.ndarray) -> np.ndarray:
    """Class probabilities ``(n, C, H, W)`` of normalised images ``(n, H, W)``.

    Runs under ``inference_mode`` itself: batch jobs call path APIs on their own thread,
    outside the runtime's model thread and its inference mode.
    """
    with torch.inference_mode():
        logits = net(torch.from_numpy(np.ascontiguousarray(batch[:, None])))
        return torch.softmax(logits, dim=1).numpy()


def _tile_starts(length: int) -> list[int]:
    return list(range(0, max(length - TILE, 0) + 1, TILE)) + (
        [length - TILE] if length > TILE and (length - TILE) % TILE else []
    )


def _probabilities_tiled(image: np.ndarray) -> np.ndarray:
    """Class probabilities ``(C, H, W)`` of one normalised image of any size."""
    height, width = image.shape
    if max(height, width) <= TILE:
        single: np.ndarray = _probabilities(image[None])[0]
        return single
    out = np.empty((len(CLASSES), height, width), np.float32)
    for top in _tile_starts(height):
        for left in _tile_starts(width):
            y0, x0 = max(top - TILE_MARGIN, 0), max(left - TILE_MARGIN, 0)
            y1 = min(top + TILE + TILE_MARGIN, height)
            x1 = min(left + TILE + TILE_MARGIN, width)
            probs = _probabilities(image[None, y0:y1, x0:x1])[0]
            keep_h, keep_w = min(TILE, height - top), min(TILE, width - left)
            out[:, top : top + keep_h, left : left + keep_w] = probs[
                :, top - y0 : top - y0 + keep_h, left - x0 : left - x0 + keep_w
            ]
    return out


def segment(images: np.ndarray) -> np.ndarray:
    """Class masks of raw images: float32 (n, H, W) or (n, 1, H, W) -> uint8 (n, H, W).

    Classes: 0 background, 1 point source, 2 extended source, 3 artefact. Each image is
    normalised on its own, so any units work; images of the same size run as one batch.
    """
    try:
        array = np.asarray(images, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"segment takes float32 images; {exc}") from None
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or min(array.shape[1:]) < 8:
        raise InvalidInput(
            f"segment takes images as (n, H, W) or (n, 1, H, W) with H, W >= 8;"
            f" got shape {tuple(np.shape(images))}"
        )
    normalised = np.stack([normalise(image) for image in array])
    if max(array.shape[1:]) <= TILE:
        masks: np.ndarray = _probabilities(normalised).argmax(axis=1).astype(np.uint8)
        return masks
    return np.stack([_probabilities_tiled(image).argmax(axis=0) for image in normalised]).astype(
        np.uint8
    )


def _stretch(normalised: np.ndarray) -> np.ndarray:
    """Grey levels 0..255 of a normalised image (noise dark grey, sources white)."""
    return np.clip((normalised + 1.0) * (255.0 / 5.0), 0, 255).astype(np.uint8)


def write_preview(path: Path, normalised: np.ndarray, mask: np.ndarray) -> None:
    """A PNG of two panels: the image, and the image under a translucent class overlay."""
    from PIL import Image

    step = max(1, -(-max(mask.shape) // PREVIEW_MAX))  # ceil: the longest side <= PREVIEW_MAX
    grey = _stretch(normalised[::step, ::step])
    classes = mask[::step, ::step]
    rgb = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)
    colours = np.asarray(PALETTE, np.float32)[classes]
    overlay = np.where((classes > 0)[:, :, None], 0.45 * rgb + 0.55 * colours, rgb)
    gap = np.full((grey.shape[0], 4, 3), 255, np.uint8)
    panels = np.concatenate([rgb.astype(np.uint8), gap, overlay.astype(np.uint8)], axis=1)
    # Fast zlib level: a preview is looked at once, and level 6 costs more than the network.
    Image.fromarray(panels).save(path, compress_level=1)


def write_mask_fits(path: Path, mask: np.ndarray, header: Any | None) -> None:
    """The mask as a uint8 FITS image carrying the input's celestial WCS, if it had one."""
    from astropy.io import fits

    out = fits.Header()
    if header is not None:
        for card in header.cards:
            if card.keyword not in ("BUNIT", "BMAJ", "BMIN", "BPA", "COMMENT", "HISTORY", ""):
                out.append(card)
    for index, name in enumerate(CLASSES):
        out[f"CLASS{index}"] = (name, f"pixel value {index}")
    out["BUNIT"] = ("class", "segmentation class index")
    out["ORIGIN"] = "hubserve astro-segmenter"
    fits.PrimaryHDU(data=mask.astype(np.uint8), header=out).writeto(path, overwrite=True)


def segment_folder(src: Path, out_dir: Path) -> dict[str, Any]:
    """Segment one image file of a folder; writes mask (FITS, same WCS), preview and catalogue.

    Returns the file name, the image shape, object counts per class and the catalogue rows.
    """
    try:
        image, header = read_image(src)
    except ValueError as exc:  # not an image, or a damaged one: the caller's file, not a bug
        raise InvalidInput(str(exc)) from None
    normalised = normalise(image)
    probabilities = _probabilities_tiled(normalised)
    mask = probabilities.argmax(axis=0).astype(np.uint8)
    stem = src.name.rsplit(".", 1)[0]
    write_mask_fits(out_dir / f"{stem}.mask.fits", mask, header)
    write_preview(out_dir / f"{stem}.png", normalised, mask)
    rows = measure_objects(
        image, mask, CLASSES, file=src.name, header=header, probabilities=probabilities
    )
    write_catalogue(rows, out_dir)
    counts = {name: sum(row["class"] == name for row in rows) for name in CLASSES[1:]}
    return {
        "file": src.name,
        "shape": list(image.shape),
        "wcs": header is not None,
        "objects": counts,
        "catalogue": rows,
    }


service.add_api(
    segment,
    input=kinds.ndarray("float32"),
    output=kinds.ndarray("uint8"),
    batchable=True,
    max_batch_size=8,
    max_latency_ms=5.0,
)
service.add_api(segment_folder, input="path", output="json")
