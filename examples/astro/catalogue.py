"""From a class mask to a catalogue of objects: connected components, measured.

A segmentation says which pixels are "point source", "extended source" or "artefact"; an
astronomer wants a list of objects with positions and fluxes. Each class's pixels are split
into 8-connected components (diagonal neighbours touch, as they do for a source one beam
wide), and every component becomes a row: pixel centroid (weighted by the positive flux, so
it sits on the peak of a lopsided source), sky position when the image has a WCS, area, peak
and summed flux, the flux in Jy when the image is in Jy/beam with a known beam, the bounding
box and the network's mean confidence over the component.

Labelling is done here with numpy rather than ``scipy.ndimage.label``: it is the only
thing scipy would be needed for, and a run-length union-find is short. Each row of the mask
is cut into runs of foreground pixels (vectorised); runs of consecutive rows that overlap or
touch diagonally are merged with a union-find whose cost is in the number of runs, not
pixels.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "COLUMNS",
    "MIN_AREA",
    "collect_catalogues",
    "label_components",
    "measure_objects",
    "rows_from_job",
    "write_catalogue",
]

#: Columns of ``catalogue.csv``, in order (``catalogue.json`` has the same keys per row).
COLUMNS = (
    "file",
    "id",
    "class",
    "x",
    "y",
    "ra",
    "dec",
    "area_px",
    "peak",
    "flux",
    "flux_jy",
    "score",
    "x_min",
    "y_min",
    "x_max",
    "y_max",
)
#: Components smaller than this (pixels) are dropped as noise, per class name.
MIN_AREA = {"point": 3, "extended": 8, "artefact": 16}


def label_components(binary: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a 2-D boolean array: ``(labels int32, count)``.

    Labels run from 1 in order of each component's first pixel (row-major); 0 is background.
    """
    binary = np.asarray(binary, dtype=bool)
    if binary.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {binary.shape}")
    height, width = binary.shape
    labels = np.zeros((height, width), np.int32)
    padded = np.zeros((height, width + 2), np.int8)
    padded[:, 1:-1] = binary
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)  # row-major, so starts and ends pair up
    _, ends = np.nonzero(edges == -1)  # exclusive
    n_runs = len(rows)
    if n_runs == 0:
        return labels, 0

    parent = list(range(n_runs))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # Index of the first run of every row, to walk pairs of consecutive rows.
    row_first = np.searchsorted(rows, np.arange(height + 1))
    start_list, end_list = starts.tolist(), ends.tolist()
    for row in range(1, height):
        above = range(row_first[row - 1], row_first[row])
        below = range(row_first[row], row_first[row + 1])
        if not above or not below:
            continue
        i, j = above.start, below.start
        while i < above.stop and j < below.stop:
            # Runs [s, e) touch in 8-connectivity when each starts at most one past the other.
            if start_list[i] <= end_list[j] and start_list[j] <= end_list[i]:
                root_i, root_j = find(i), find(j)
                if root_i != root_j:
                    parent[max(root_i, root_j)] = min(root_i, root_j)
            if end_list[i] < end_list[j]:
                i += 1
            else:
                j += 1

    run_label = np.empty(n_runs, np.int32)
    compact: dict[int, int] = {}
    for run in range(n_runs):
        root = find(run)
        run_label[run] = compact.setdefault(root, len(compact) + 1)
    lengths = ends - starts
    flat_index = np.repeat(rows * width + starts - np.cumsum(lengths) + lengths, lengths)
    flat_index += np.arange(int(lengths.sum()))
    labels.reshape(-1)[flat_index] = np.repeat(run_label, lengths)
    return labels, len(compact)


def _beam_area_px(header: Any) -> float | None:
    """Beam solid angle in pixels when the header gives the beam and Jy/beam units."""
    if header is None or "JY/BEAM" not in str(header.get("BUNIT", "")).upper():
        return None
    try:
        bmaj, bmin = float(header["BMAJ"]), float(header["BMIN"])
        pixel = abs(float(header["CDELT1"]) * float(header["CDELT2"]))
    except (KeyError, TypeError, ValueError):
        return None
    if not (bmaj > 0 and bmin > 0 and pixel > 0):
        return None
    return math.pi / (4 * math.log(2)) * bmaj * bmin / pixel


def _sky_positions(header: Any, x: np.ndarray, y: np.ndarray) -> tuple[list[Any], list[Any]]:
    if header is None or len(x) == 0:
        return [None] * len(x), [None] * len(x)
    from astropy.wcs import WCS

    ra, dec = WCS(header).pixel_to_world_values(x, y)
    return [round(float(v), 7) for v in np.atleast_1d(ra)], [
        round(float(v), 7) for v in np.atleast_1d(dec)
    ]


def measure_objects(
    image: np.ndarray,
    mask: np.ndarray,
    classes: Sequence[str],
    *,
    file: str = "",
    header: Any | None = None,
    probabilities: np.ndarray | None = None,
    min_area: Mapping[str, int] = MIN_AREA,
) -> list[dict[str, Any]]:
    """One row per connected component of every non-background class of ``mask``.

    ``image`` is the input in its own units (fluxes are sums of its pixels); ``header`` a
    celestial FITS header for RA/Dec (degrees, ICRS as the header says) and the Jy
    conversion; ``probabilities`` the per-class probabilities ``(C, H, W)`` for ``score``.
    Rows are sorted by class, then by decreasing flux; ``id`` numbers them from 1.
    """
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
    beam_px = _beam_area_px(header)
    found: list[dict[str, Any]] = []
    for index, name in enumerate(classes):
        if index == 0:
            continue
        labels, count = label_components(mask == index)
        if count == 0:
            continue
        # Only the class's own pixels, grouped by component (a few % of the image).
        ys, xs = np.nonzero(labels)
        by_label = np.argsort(labels[ys, xs], kind="stable")
        ys, xs = ys[by_label], xs[by_label]
        lab = labels[ys, xs]
        starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
        area = np.diff(np.r_[starts, len(lab)])
        pixels = values[ys, xs]
        positive = np.clip(pixels, 0.0, None)
        flux = np.add.reduceat(pixels, starts)
        weight = np.add.reduceat(positive, starts)
        has_weight = weight > 0
        safe_weight = np.where(has_weight, weight, 1.0)
        cx = np.where(
            has_weight,
            np.add.reduceat(positive * xs, starts) / safe_weight,
            np.add.reduceat(xs.astype(np.float64), starts) / area,
        )
        cy = np.where(
            has_weight,
            np.add.reduceat(positive * ys, starts) / safe_weight,
            np.add.reduceat(ys.astype(np.float64), starts) / area,
        )
        peak = np.maximum.reduceat(pixels, starts)
        x_min, x_max = np.minimum.reduceat(xs, starts), np.maximum.reduceat(xs, starts)
        y_min, y_max = np.minimum.reduceat(ys, starts), np.maximum.reduceat(ys, starts)
        score = None
        if probabilities is not None:
            score = np.add.reduceat(probabilities[index][ys, xs].astype(np.float64), starts)
        for k in np.flatnonzero(area >= min_area.get(name, 1)):
            found.append(
                {
                    "file": file,
                    "class": name,
                    "x": round(float(cx[k]), 3),
                    "y": round(float(cy[k]), 3),
                    "ra": None,
                    "dec": None,
                    "area_px": int(area[k]),
                    "peak": float(peak[k]),
                    "flux": float(flux[k]),
                    "flux_jy": float(flux[k] / beam_px) if beam_px else None,
                    "score": round(float(score[k] / area[k]), 4) if score is not None else None,
                    "x_min": int(x_min[k]),
                    "y_min": int(y_min[k]),
                    "x_max": int(x_max[k]),
                    "y_max": int(y_max[k]),
                }
            )
    ras, decs = _sky_positions(
        header, np.array([r["x"] for r in found]), np.array([r["y"] for r in found])
    )
    for row, ra, dec in zip(found, ras, decs, strict=True):
        row["ra"], row["dec"] = ra, dec
    order = {name: i for i, name in enumerate(classes)}
    found.sort(key=lambda row: (order[row["class"]], -row["flux"]))
    return [{"id": i, **row} for i, row in enumerate(found, start=1)]


def write_catalogue(rows: Iterable[Mapping[str, Any]], directory: Path) -> list[Path]:
    """``catalogue.csv`` (columns :data:`COLUMNS`; empty cells for missing values) and
    ``catalogue.json`` (a list of rows) in ``directory``; returns the two paths."""
    rows = list(rows)
    csv_path, json_path = directory / "catalogue.csv", directory / "catalogue.json"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in COLUMNS})
    json_path.write_text(json.dumps(rows, indent=1) + "\n")
    return [csv_path, json_path]


def rows_from_job(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every catalogue row of a finished ``segment_folder`` job, from its status or
    ``_job.json``: ``file`` becomes the item's path relative to the job's input."""
    rows: list[dict[str, Any]] = []
    for item in status.get("items", []):
        result = item.get("result") or {}
        if not item.get("ok") or not isinstance(result, Mapping):
            continue
        for row in result.get("catalogue", []):
            rows.append({**row, "file": item["item"]})
    return rows


def collect_catalogues(output_dir: str | Path, *, write: bool = True) -> list[dict[str, Any]]:
    """Merge the per-image catalogues below a local job output folder into one.

    A batch job publishes each image's outputs in a folder of its own
    (``<name>/catalogue.json``); this gathers them (``file`` becomes the image's folder
    relative to ``output_dir``) and, with ``write``, writes ``catalogue.csv`` and
    ``catalogue.json`` of the whole folder at its root.
    """
    root = Path(output_dir)
    rows: list[dict[str, Any]] = []
    for path in sorted(root.rglob("catalogue.json")):
        if path.parent == root:
            continue
        folder = path.parent.relative_to(root).as_posix()
        rows.extend({**row, "file": folder} for row in json.loads(path.read_text()))
    if write:
        write_catalogue(rows, root)
    return rows
