"""The astronomy example end to end: generator, labelling, shipped weights, and the service
packaged with ``build_bundle`` and served by the real runtime (in-process ASGI app, real
job manager) over local folders, a real S3 server and a real WebDAV server.

The outputs are checked against what the generator put in the images: the masks carry the
input's WCS, the previews open, and the catalogue finds the bright sources where they are.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from fastapi.testclient import TestClient
from minio import Minio
from PIL import Image

from model_runtime import BuiltBundle, build_bundle, load_bundle
from model_runtime.runtime import Runtime, RuntimeSettings, create_app
from model_runtime.testing.s3server import S3Server
from tests.webdav_server import WebDAVServer

from .conftest import ASTRO_DIR

# The example's modules, importable thanks to the conftest (they live outside any package).
import catalogue  # isort: skip
import skygen  # isort: skip
import train  # isort: skip

FINAL_STATES = {"succeeded", "completed_with_errors", "failed", "cancelled"}
#: What a damaged upload looks like: a FITS card cut short, then garbage.
CORRUPT_FITS = b"SIMPLE  =                    T / cut here" + bytes(range(256)) * 4


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def astro_bundle(tmp_path_factory: pytest.TempPathFactory) -> BuiltBundle:
    """The service packaged as the notebook does it, from ``service.py:service``."""
    return build_bundle(
        f"{ASTRO_DIR / 'service.py'}:service", output_dir=tmp_path_factory.mktemp("astro")
    )


@pytest.fixture(scope="module")
def fields(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 256x256 fields (FITS, PNG, NumPy, FITS) with their hidden ``.truth/``."""
    root = tmp_path_factory.mktemp("fields") / "in"
    skygen.write_dataset(root, 4, seed=7, formats=("fits", "png", "npy"))
    return root


def truth(root: Path) -> dict[str, Any]:
    return dict(json.loads((root / ".truth" / "truth.json").read_text())["fields"])


def serve(
    bundle: BuiltBundle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    s3: S3Server | None = None,
) -> TestClient:
    """The real runtime app over the bundle; S3 credentials come from the environment,
    as the hub service passes them to the runtimes it starts."""
    if s3 is not None:
        monkeypatch.setenv("HUBSERVE_S3_ENDPOINT", f"http://{s3.endpoint}")
        monkeypatch.setenv("HUBSERVE_S3_ACCESS_KEY", s3.access_key)
        monkeypatch.setenv("HUBSERVE_S3_SECRET_KEY", s3.secret_key)
    service = load_bundle(bundle.archive, cache_dir=tmp_path / "cache")
    runtime = Runtime(service, RuntimeSettings(work_dir=tmp_path / "work"))
    return TestClient(create_app(runtime), raise_server_exceptions=False)


@pytest.fixture
def client(
    astro_bundle: BuiltBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    with serve(astro_bundle, tmp_path, monkeypatch) as test_client:
        yield test_client


def run_job(client: TestClient, source: str, target: str) -> tuple[dict[str, Any], list[int]]:
    """Start ``segment_folder`` over ``source`` and poll it to the end, asking each time for
    the new items only, as the client does; returns the final status with every item and every
    ``items_done`` seen while it ran (the progress a notebook shows)."""
    started = client.post("/jobs/segment_folder", json={"input": source, "output": target})
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    seen: list[int] = []
    items: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while True:
        status: dict[str, Any] = client.get(
            f"/jobs/{job_id}", params={"items_from": len(items)}
        ).json()
        items += status["items"]
        seen.append(status["items_done"])
        if status["state"] in FINAL_STATES and len(items) == status["items_done"]:
            return {**status, "items": items}, seen
        assert time.monotonic() < deadline, f"job did not finish: {status}"
        time.sleep(0.02)


def add_bad_files(root: Path) -> None:
    (root / "corrupt.fits").write_bytes(CORRUPT_FITS)
    (root / "notes.txt").write_text("observing log, not an image\n")


def check_job(status: dict[str, Any], images: list[str]) -> None:
    """Every image processed, the two bad files reported and skipped, progress to 1."""
    assert status["state"] == "completed_with_errors", status
    assert status["items_total"] == len(images) + 2
    assert (status["items_done"], status["items_failed"], status["progress"]) == (
        len(images) + 2,
        2,
        1.0,
    )
    errors = {item["item"]: item["error"] for item in status["items"] if not item["ok"]}
    # Refused with InvalidInput: the item's error is the message alone.
    assert errors["corrupt.fits"].startswith("corrupt.fits: not a readable FITS")
    assert errors["notes.txt"].startswith("notes.txt: unsupported file type")
    done = sorted(item["item"] for item in status["items"] if item["ok"])
    assert done == sorted(images)


def expected_outputs(names: list[str]) -> set[str]:
    files = {"catalogue.csv", "catalogue.json"}
    return {
        f"{stem}/{f}"
        for stem in (name.rsplit(".", 1)[0] for name in names)
        for f in (*files, f"{stem}.mask.fits", f"{stem}.png")
    } | {"_job.json"}


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def check_mask_fits(data: bytes, source: Path) -> np.ndarray:
    """The mask has the input's celestial WCS (FITS inputs) and the class names."""
    with fits.open(io.BytesIO(data)) as hdus:
        mask = np.asarray(hdus[0].data)
        header = hdus[0].header
    assert mask.dtype == np.uint8
    assert [header[f"CLASS{i}"] for i in range(4)] == list(skygen.CLASSES)
    if source.suffix == ".fits":
        with fits.open(source) as hdus:
            want = WCS(hdus[0].header).celestial
        got = WCS(header)
        assert got.wcs.ctype[0] == "RA---SIN" and got.wcs.ctype[1] == "DEC--SIN"
        np.testing.assert_allclose(got.wcs.crval, want.wcs.crval)
        np.testing.assert_allclose(got.wcs.crpix, want.wcs.crpix)
        np.testing.assert_allclose(got.wcs.cdelt, want.wcs.cdelt)
        assert mask.shape == (256, 256)
    else:
        assert "CTYPE1" not in header
    return mask


def check_catalogue(rows: list[dict[str, Any]], field: dict[str, Any], source: Path) -> None:
    """Objects are found where the generator put them.

    Every point source with a peak above 30 sigma has a detected point source within 3 px,
    and most detected point sources are real; every ring or stripe artefact has a detected
    artefact component over its centre; every extended source but at most one has a
    detected extended component near its core (within 12 px for a resolved galaxy, 40 px
    for a double-lobed one: its lobes, up to 40 px out, may be detected apart from a faint
    core). Sky positions follow the image's WCS. (Over 40 other fields the shipped weights
    find 100% of these points, rings, stripes and radio galaxies, 96% of the resolved
    galaxies, and 95% of their point detections are real.)
    """
    points = [(r["x"], r["y"]) for r in rows if r["class"] == "point"]
    extended = [r for r in rows if r["class"] == "extended"]
    artefacts = [r for r in rows if r["class"] == "artefact"]
    placed = [(o["x"], o["y"]) for o in field["objects"] if o["cls"] == "point"]
    for obj in field["objects"]:
        if obj["cls"] == "point" and obj["snr"] > 30:
            distance = min(np.hypot(x - obj["x"], y - obj["y"]) for x, y in points)
            assert distance < 3.0, (source.name, obj)
        if obj["cls"] == "artefact":
            assert any(
                r["x_min"] <= obj["x"] <= r["x_max"] and r["y_min"] <= obj["y"] <= r["y_max"]
                for r in artefacts
            ), (source.name, obj)
    real = [min(np.hypot(x - px, y - py) for px, py in placed) < 3.0 for x, y in points]
    assert len(real) - sum(real) <= max(2, len(real) // 5), (source.name, points)
    galaxies = [obj for obj in field["objects"] if obj["cls"] == "extended"]
    missed = [
        obj
        for obj in galaxies
        if not any(
            np.hypot(r["x"] - obj["x"], r["y"] - obj["y"])
            < (12 if obj["kind"] == "resolved" else 40)
            for r in extended
        )
    ]
    assert len(missed) <= 1, (source.name, missed, extended)
    assert all(r["area_px"] >= catalogue.MIN_AREA[r["class"]] for r in rows)
    assert [r["id"] for r in rows] == list(range(1, len(rows) + 1))
    if source.suffix == ".fits":
        with fits.open(source) as hdus:
            wcs = WCS(hdus[0].header)
        brightest = max((r for r in rows if r["class"] == "point"), key=lambda r: r["flux"])
        ra, dec = wcs.pixel_to_world_values(brightest["x"], brightest["y"])
        # The centroid is rounded to 0.001 px: within 0.01 arcsec on the sky.
        offset_ra = (brightest["ra"] - float(ra)) * np.cos(np.radians(float(dec)))
        assert abs(offset_ra) < 3e-6 and abs(brightest["dec"] - float(dec)) < 3e-6
        assert brightest["flux_jy"] is not None and brightest["flux_jy"] > 0
    else:
        assert all(r["ra"] is None and r["flux_jy"] is None for r in rows)


# -- the generator, the labelling and the weights -------------------------------------------


def test_generated_masks_match_the_objects_placed() -> None:
    sky = skygen.make_sky(np.random.default_rng(3), 256)
    assert sky.image.dtype == np.float32 and sky.mask.dtype == np.uint8
    assert set(np.unique(sky.mask)) <= {0, 1, 2, 3}
    for obj in sky.objects:
        if obj.cls == "point" and obj.snr > 10:
            assert sky.mask[round(obj.y), round(obj.x)] == skygen.POINT
    # The noise is what the normalisation measures: a field without sources has rms ~1.
    quiet = sky.image[sky.mask == 0]
    assert 0.8 < 1.4826 * np.median(np.abs(quiet - np.median(quiet))) < 1.2


def test_dataset_files_read_back_with_their_wcs(tmp_path: Path) -> None:
    paths = skygen.write_dataset(tmp_path / "d", 3, size=64, seed=1, formats=("fits", "png", "npy"))
    assert [p.name for p in paths] == ["sky_0000.fits", "sky_0001.png", "sky_0002.npy"]
    assert sorted(p.name for p in (tmp_path / "d" / ".truth").iterdir()) == [
        "sky_0000.mask.fits",
        "sky_0001.mask.fits",
        "sky_0002.mask.fits",
        "truth.json",
    ]
    image, header = skygen.read_image(paths[0])
    assert image.shape == (64, 64) and header is not None
    assert header["BUNIT"] == "JY/BEAM" and header["CTYPE1"] == "RA---SIN"
    png, no_header = skygen.read_image(paths[1])
    assert png.shape == (64, 64) and no_header is None
    # PNG is linear in the data, so the normalised images agree up to quantisation.
    array = np.load(paths[2])
    assert skygen.read_image(paths[2])[0].tolist() == array.tolist()


def test_radio_cubes_with_degenerate_axes_are_read_as_images(tmp_path: Path) -> None:
    """Radio images are often (Stokes, frequency, Dec, RA): the celestial WCS survives."""
    header = skygen.celestial_header(32, 32, 150.0, -30.0)
    cube = fits.Header()
    cube["NAXIS"] = 4
    for key, value in header.items():
        cube[key] = value
    cube.update({"CTYPE3": "FREQ", "CRVAL3": 1.4e9, "CDELT3": 1e6, "CRPIX3": 1.0})
    cube.update({"CTYPE4": "STOKES", "CRVAL4": 1.0, "CDELT4": 1.0, "CRPIX4": 1.0})
    data = np.random.default_rng(0).normal(size=(1, 1, 32, 32)).astype(np.float32)
    fits.PrimaryHDU(data=data, header=cube).writeto(tmp_path / "cube.fits")
    image, read_header = skygen.read_image(tmp_path / "cube.fits")
    assert image.shape == (32, 32)
    assert WCS(read_header).naxis == 2
    assert WCS(read_header).wcs.crval.tolist() == [150.0, -30.0]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bad.fits", CORRUPT_FITS),
        ("empty.fits", b""),
        ("bad.png", b"\x89PNG\r\n\x1a\nnot really"),
        ("bad.npy", b"\x93NUMPY junk"),
        ("cube.npy", None),
        ("notes.txt", b"hello"),
    ],
    ids=["truncated-fits", "empty-fits", "bad-png", "bad-npy", "3d-npy", "text"],
)
def test_unreadable_files_raise_value_error(
    tmp_path: Path, name: str, content: bytes | None
) -> None:
    path = tmp_path / name
    if content is None:
        np.save(path, np.zeros((3, 16, 16), np.float32))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=name):
        skygen.read_image(path)


def test_labelling_matches_a_flood_fill() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        binary = rng.random(tuple(rng.integers(1, 24, 2))) < rng.uniform(0.05, 0.7)
        labels, count = catalogue.label_components(binary)
        assert (labels > 0).tolist() == binary.tolist()
        # Same label <=> 8-connected: check with a flood fill from each component's pixels.
        for component in range(1, count + 1):
            ys, xs = np.nonzero(labels == component)
            seen = {(ys[0], xs[0])}
            stack = [(ys[0], xs[0])]
            while stack:
                y, x = stack.pop()
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = y + dy, x + dx
                        if (
                            0 <= ny < binary.shape[0]
                            and 0 <= nx < binary.shape[1]
                            and binary[ny, nx]
                            and (ny, nx) not in seen
                        ):
                            seen.add((ny, nx))
                            stack.append((ny, nx))
            assert seen == set(zip(ys.tolist(), xs.tolist(), strict=True))


def test_catalogue_rows_measure_each_component() -> None:
    """Area, centroid, peak, flux, box and score of every row, against a direct computation."""
    rng = np.random.default_rng(1)
    sky = skygen.make_sky(rng, 256)
    image = sky.image * 1e-4  # Jy/beam
    probabilities = rng.random((4, 256, 256)).astype(np.float32)
    header = skygen.celestial_header(256, 256, 10.0, -20.0)
    header.update({"BUNIT": "JY/BEAM", "BMAJ": 6 / 3600, "BMIN": 6 / 3600})
    rows = catalogue.measure_objects(
        image, sky.mask, skygen.CLASSES, header=header, probabilities=probabilities, min_area={}
    )
    expected = []
    for index, name in enumerate(skygen.CLASSES[1:], start=1):
        labels, count = catalogue.label_components(sky.mask == index)
        for component in range(1, count + 1):
            inside = labels == component
            ys, xs = np.nonzero(inside)
            weights = np.clip(image[inside].astype(np.float64), 0, None)
            expected.append(
                {
                    "class": name,
                    "x": (weights * xs).sum() / weights.sum(),
                    "y": (weights * ys).sum() / weights.sum(),
                    "area_px": int(inside.sum()),
                    "flux": float(image[inside].sum()),
                    "peak": float(image[inside].max()),
                    "box": (xs.min(), ys.min(), xs.max(), ys.max()),
                    "score": float(probabilities[index][inside].mean()),
                }
            )
    assert len(rows) == len(expected) > 5
    for row in rows:  # class, area and box identify a component in this field
        box = (row["x_min"], row["y_min"], row["x_max"], row["y_max"])
        (match,) = [
            e
            for e in expected
            if (e["class"], e["area_px"], e["box"]) == (row["class"], row["area_px"], box)
        ]
        assert (row["x"], row["y"]) == pytest.approx((match["x"], match["y"]), abs=1e-3)
        assert row["flux"] == pytest.approx(match["flux"]) and row["peak"] == match["peak"]
        assert row["score"] == pytest.approx(match["score"], abs=1e-4)
        beam_px = np.pi / (4 * np.log(2)) * 9  # a 3-pixel beam
        assert row["flux_jy"] == pytest.approx(match["flux"] / beam_px)
        ra, dec = WCS(header).pixel_to_world_values(row["x"], row["y"])
        assert (row["ra"], row["dec"]) == pytest.approx((float(ra), float(dec)), abs=1e-6)


def test_shipped_weights_reach_the_stated_miou() -> None:
    """The weights in the repository score what README.md states on fresh held-out fields."""
    model = train.load_model()
    from safetensors import safe_open

    with safe_open(str(train.WEIGHTS), framework="pt") as handle:
        stated = json.loads(handle.metadata()["scores"])
    assert train.WEIGHTS.stat().st_size < 2_000_000
    images, masks = train.make_fields(12, 256, seed=424242)
    scores = train.evaluate(model, images, masks)
    assert scores["miou"] > stated["miou"] - 0.05, (scores, stated["miou"])
    assert scores["iou"]["point"] > 0.5 and scores["iou"]["artefact"] > 0.5, scores


def test_training_runs_and_saves_loadable_weights(tmp_path: Path) -> None:
    model, scores = train.train(steps=2, batch=2, crop=64, fields=2, held_out=1, log_every=1)
    train.save(model, tmp_path / "w.safetensors", scores)
    again = train.load_model(tmp_path / "w.safetensors")
    x = np.random.default_rng(0).normal(size=(1, 64, 64)).astype(np.float32)
    assert np.array_equal(train.predict(model, x), train.predict(again, x))
    assert set(scores) >= {"miou", "iou", "train_seconds"}


# -- the service, served ----------------------------------------------------------------------


def test_segment_masks_images_over_http(client: TestClient, fields: Path) -> None:
    names = ["sky_0000.fits", "sky_0003.fits"]
    images = np.stack([skygen.read_image(fields / name)[0] for name in names])
    truth_masks = [
        fits.getdata(fields / ".truth" / name.replace(".fits", ".mask.fits")) for name in names
    ]

    body = io.BytesIO()
    np.save(body, images)
    reply = client.post(
        "/segment", content=body.getvalue(), headers={"content-type": "application/x-npy"}
    )
    assert reply.status_code == 200, reply.text
    masks = np.load(io.BytesIO(reply.content))
    assert masks.shape == (2, 256, 256) and masks.dtype == np.uint8
    predicted = np.concatenate([m.ravel() for m in masks])
    expected = np.concatenate([m.ravel() for m in truth_masks])
    assert train.iou_per_class(predicted, expected)["point"] > 0.4
    assert np.mean(predicted == expected) > 0.9

    # (n, 1, H, W) works too, and JSON lists of a different size.
    reply = client.post("/segment", json={"inputs": images[:1, None, :64, :64].round(6).tolist()})
    assert reply.status_code == 200, reply.text
    assert np.asarray(reply.json()).shape == (1, 64, 64)
    # A shape the API refuses (InvalidInput): 422 with the reason, alone in its batch.
    bad = client.post("/segment", json={"inputs": [[1.0, 2.0]]})
    assert bad.status_code == 422 and "(n, H, W)" in bad.json()["detail"]
    tiny = np.zeros((1, 4, 4), np.float32).tolist()
    good = images[:1, :32, :32].round(6).tolist()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda b: client.post("/segment", json=b), [good] * 5 + [tiny]))
    assert [r.status_code for r in replies] == [200] * 5 + [422]
    assert "H, W >= 8" in replies[-1].json()["detail"]


def test_segment_folder_job_over_a_local_folder(
    client: TestClient, fields: Path, tmp_path: Path
) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    for path in fields.iterdir():
        if path.is_file():
            (inbox / path.name).write_bytes(path.read_bytes())
    add_bad_files(inbox)
    images = sorted(p.name for p in fields.iterdir() if p.is_file())

    status, seen = run_job(client, str(inbox), str(tmp_path / "out"))

    check_job(status, images)
    assert seen == sorted(seen) and seen[-1] == len(images) + 2
    out = tmp_path / "out"
    assert files_under(out) == expected_outputs(images)
    fields_truth = truth(fields)
    for name in images:
        stem = name.rsplit(".", 1)[0]
        mask = check_mask_fits((out / stem / f"{stem}.mask.fits").read_bytes(), fields / name)
        with Image.open(out / stem / f"{stem}.png") as preview:
            assert preview.size == (2 * mask.shape[1] + 4, mask.shape[0])
        rows = json.loads((out / stem / "catalogue.json").read_text())
        check_catalogue(rows, fields_truth[name], fields / name)
        csv_lines = (out / stem / "catalogue.csv").read_text().splitlines()
        assert csv_lines[0].split(",") == list(catalogue.COLUMNS)
        assert len(csv_lines) == len(rows) + 1
    # The folder's catalogue, from the job status or merged from the files, is the same.
    summary = json.loads((out / "_job.json").read_text())
    from_job = catalogue.rows_from_job(summary)
    merged = catalogue.collect_catalogues(out)
    assert len(from_job) == len(merged) > 4 * len(images)
    assert {r["file"] for r in from_job} == set(images)
    assert (out / "catalogue.csv").is_file() and (out / "catalogue.json").is_file()


@pytest.mark.s3
def test_segment_folder_job_from_s3_to_s3(
    astro_bundle: BuiltBundle,
    fields: Path,
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s3 = Minio(
        s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        secure=False,
    )
    bucket = "astro-survey"
    if not s3.bucket_exists(bucket):
        s3.make_bucket(bucket)
    images = ["sky_0000.fits", "sky_0001.png"]
    uploads = {f"run1/in/{name}": (fields / name).read_bytes() for name in images}
    uploads["run1/in/corrupt.fits"] = CORRUPT_FITS
    uploads["run1/in/notes.txt"] = b"observing log"
    for key, data in uploads.items():
        s3.put_object(bucket, key, io.BytesIO(data), len(data))

    with serve(astro_bundle, tmp_path, monkeypatch, s3=s3_server) as client:
        status, _ = run_job(client, f"s3://{bucket}/run1/in", f"s3://{bucket}/run1/out")

    check_job(status, images)
    keys = {
        str(obj.object_name).removeprefix("run1/out/")
        for obj in s3.list_objects(bucket, prefix="run1/out/", recursive=True)
    }
    assert keys == expected_outputs(images)
    response = s3.get_object(bucket, "run1/out/sky_0000/sky_0000.mask.fits")
    try:
        check_mask_fits(response.read(), fields / "sky_0000.fits")
    finally:
        response.close()
        response.release_conn()
    rows = catalogue.rows_from_job(status)
    check_catalogue(
        [r for r in rows if r["file"] == "sky_0000.fits"],
        truth(fields)["sky_0000.fits"],
        fields / "sky_0000.fits",
    )


def test_segment_folder_job_from_webdav_to_webdav(
    client: TestClient, fields: Path, webdav: WebDAVServer
) -> None:
    inbox = webdav.root / "survey" / "in"
    inbox.mkdir(parents=True)
    images = ["sky_0000.fits", "sky_0002.npy"]
    for name in images:
        (inbox / name).write_bytes((fields / name).read_bytes())
    add_bad_files(inbox)

    status, _ = run_job(
        client,
        webdav.uri("survey/in", with_password=True),
        webdav.uri("survey/out", with_password=True),
    )

    check_job(status, images)
    assert webdav.password not in json.dumps(status)
    out = webdav.root / "survey" / "out"
    assert files_under(out) == expected_outputs(images)
    check_mask_fits((out / "sky_0000" / "sky_0000.mask.fits").read_bytes(), inbox / images[0])
    for name in images:
        stem = name.rsplit(".", 1)[0]
        rows = json.loads((out / stem / "catalogue.json").read_text())
        check_catalogue(rows, truth(fields)[name], fields / name)
