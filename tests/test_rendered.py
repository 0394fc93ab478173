"""WADO-RS rendered resources and thumbnails (PS3.18 §10.4.1.1.4, §10.4.1.1.5, §8.3.5).

Rendered pixels are compared with a reference computed here from pydicom's pixel_array, the
rescale and the PS3.3 C.11.2.1.2.1 linear window formula, for every storable sample."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.sequence import Sequence

from archive.app import create_app
from archive.pixels import render
from tests import synth
from tests.conftest import make_config, multipart
from tests.samples import Sample, storable
from tests.test_roundtrip import parse_multipart

warnings.filterwarnings("ignore", module="pydicom")


# -- helpers ---------------------------------------------------------------------------------------


async def stow(client, *files: bytes) -> None:
    body, ctype = multipart(list(files))
    resp = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status == 200, await resp.text()


def path_of(ds: Dataset) -> str:
    return (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


async def get_image(client, url: str, **headers: str) -> tuple[Image.Image, bytes, str]:
    resp = await client.get(url, headers=headers)
    body = await resp.read()
    assert resp.status == 200, (url, body[:300])
    img = Image.open(BytesIO(body))
    img.load()
    return img, body, resp.headers["Content-Type"]


def rescaled(arr: np.ndarray, ds: Dataset, frame: int) -> np.ndarray:
    """Reference Modality LUT: the frame's Pixel Value Transformation functional group (per-frame,
    else shared), else pydicom's apply_modality_lut (rescale or Modality LUT Sequence)."""
    for name, i in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(name)
        if groups and len(groups) > i and groups[i].get("PixelValueTransformationSequence"):
            item = groups[i].PixelValueTransformationSequence[0]
            if "RescaleSlope" in item and "RescaleIntercept" in item:
                return arr * float(item.RescaleSlope) + float(item.RescaleIntercept)
    return apply_modality_lut(arr, ds).astype(np.float64)


def linear_window(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 with y_min = 0, y_max = 255, written out element by element."""
    y = np.empty_like(x, dtype=np.float64)
    low, high = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    below, above = x <= low, x > high
    mid = ~below & ~above
    y[below], y[above] = 0, 255
    y[mid] = ((x[mid] - (c - 0.5)) / (w - 1) + 0.5) * 255
    return y


def reference(src: Path | Dataset, frame: int, window: tuple[float, float] | None) -> np.ndarray:
    """The 8-bit image the archive must render for ``frame`` (0-based) of a file or data set."""
    ds = src if isinstance(src, Dataset) else dcmread(src)
    arr = ds.pixel_array  # YBR_FULL / YBR_FULL_422 come out as RGB
    if int(ds.get("NumberOfFrames") or 1) > 1:
        arr = arr[frame]
    photometric = ds.PhotometricInterpretation
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds).astype(np.float64)
        return np.rint(rgb / 257) if rgb.max() > 255 else rgb
    if arr.ndim == 3:
        return np.rint(arr.astype(np.float64) * 255 / (2 ** ds.BitsStored - 1))
    values = rescaled(arr.astype(np.float64), ds, frame)
    c, w = window if window else value_window(values)
    y = linear_window(values, c, w)
    return 255 - y if photometric == "MONOCHROME1" else y


def value_window(values: np.ndarray) -> tuple[float, float]:
    """A window over the middle of the values (so both clipped ends are exercised)."""
    low, high = float(values.min()), float(values.max())
    return (low + high) / 2, max((high - low) / 2, 2.0)


def assert_close(img: Image.Image, expected: np.ndarray, what: str) -> None:
    got = np.asarray(img).astype(np.int64)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    diff = np.abs(got - np.rint(expected).astype(np.int64))
    assert diff.max() <= 1, f"{what}: {int((diff > 1).sum())} pixels differ by up to {diff.max()}"


def _has_pixels(sample: Sample) -> bool:
    ds = dcmread(sample.path, force=True,
                  specific_tags=["PixelData", "FloatPixelData", "DoubleFloatPixelData"])
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


# -- every sample ----------------------------------------------------------------------------------

UNDECODABLE = {  # pydicom 3 (with pylibjpeg, pyjpegls, gdcm) has no decoder for these
    "transfer-syntax/CT_JPEGProcess6_8.dcm": "JPEG spectral selection (retired)",
    "transfer-syntax/CT_JPEGProcess10_12.dcm": "JPEG full progression (retired)",
    "seg/SEG_liver_DeflatedImageFrame.dcm": "Deflated Image Frame Compression",
}


@pytest.mark.parametrize("sample", storable(), ids=lambda s: s.name)
async def test_every_sample_renders_as_the_reference(client, sample: Sample) -> None:
    """frame 1 of each storable sample, as PNG with an explicit linear window over the middle
    of its values; instances without pixel data are 404, undecodable ones 406."""
    data = sample.path.read_bytes()
    await stow(client, data)
    ds = dcmread(sample.path, stop_before_pixels=True, force=True)
    url = path_of(ds) + "/rendered"
    if not _has_pixels(sample):
        resp = await client.get(url, headers={"Accept": "image/png"})
        assert resp.status == 404 and "no pixel data" in await resp.text()
        return
    if sample.name in UNDECODABLE:
        resp = await client.get(url, headers={"Accept": "image/png"})
        assert resp.status == 406 and "cannot" in await resp.text(), await resp.text()
        return
    full = dcmread(sample.path)
    arr = full.pixel_array
    if int(full.get("NumberOfFrames") or 1) > 1:
        arr = arr[0]
    window = None
    if arr.ndim == 2 and full.PhotometricInterpretation != "PALETTE COLOR":
        window = value_window(rescaled(arr.astype(np.float64), full, 0))
    query = f"?window={window[0]!r},{window[1]!r},linear" if window else ""
    img, _, ctype = await get_image(client, url + query, Accept="image/png")
    assert ctype == "image/png"
    assert_close(img, reference(sample.path, 0, window), sample.name)


# -- synthetic instances ---------------------------------------------------------------------------


def gray(value: float, window: tuple[float, float] = (1000, 2000)) -> float:
    """The 8-bit gray the linear window maps a (rescaled) value to."""
    return float(linear_window(np.array([float(value)]), *window)[0])


def image(study: str, series: str, values: list[int], rows: int = 100, columns: int = 200,
          number: int = 1, series_number: int = 1, photometric: str = "MONOCHROME2",
          window: tuple[float, float] | None = (1000, 2000)) -> Dataset:
    """A 16-bit instance whose frame k is filled with values[k]."""
    ds = synth.dataset(study=study, series=series, rows=rows, columns=columns,
                       frames=len(values), instance_number=number)
    ds.SeriesNumber = series_number
    ds.PhotometricInterpretation = photometric
    ds.PixelData = np.concatenate(
        [np.full(rows * columns, v, dtype="<u2") for v in values]).tobytes()
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    return ds


def noise(rows: int = 256, columns: int = 256, seed: int = 4) -> Dataset:
    ds = synth.dataset(rows=rows, columns=columns)
    ds.PixelData = np.random.default_rng(seed).integers(0, 4096, rows * columns).astype("<u2").tobytes()
    return ds


def report(study: str, series: str) -> Dataset:
    """A Basic Text SR: no pixel data."""
    ds = synth.dataset(study=study, series=series, modality="SR")
    for name in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                 "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation"):
        delattr(ds, name)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    return ds


class Study:
    """Series 1: an SR. Series 2: three 200x100 instances of values 500, 1000, 1500. Series 3:
    one instance of five frames of values 300, 600, 900, 1200, 1500."""

    def __init__(self) -> None:
        self.uid = synth.uid()
        self.sr = report(self.uid, synth.uid())
        s2, s3 = synth.uid(), synth.uid()
        self.images = [image(self.uid, s2, [v], number=n, series_number=2)
                       for n, v in enumerate((500, 1000, 1500), start=1)]
        self.cine = image(self.uid, s3, [300, 600, 900, 1200, 1500], series_number=3)
        self.url = f"/dicom-web/studies/{self.uid}"

    def series_url(self, ds: Dataset) -> str:
        return f"{self.url}/series/{ds.SeriesInstanceUID}"

    async def store(self, client) -> Study:
        await stow(client, *(synth.encode(ds) for ds in [self.sr, *self.images, self.cine]))
        return self


@pytest.fixture
async def study(client) -> Study:
    return await Study().store(client)


def mean(img: Image.Image) -> float:
    return float(np.asarray(img.convert("L")).mean())


class Counter:
    """Counts the frames decoded, by wrapping render.iter_frames."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[list[int]] = []
        original = render.iter_frames

        def counting(fobj, transfer_syntax, indices):
            self.calls.append(list(indices))
            return original(fobj, transfer_syntax, indices)

        monkeypatch.setattr(render, "iter_frames", counting)


# -- VOI, modality LUT, photometric ----------------------------------------------------------------


async def test_default_window_is_the_files_first_one(client) -> None:
    ds = noise(64, 64)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = [0, 2000], [1000, 10]
    await stow(client, synth.encode(ds))
    img, _, _ = await get_image(client, path_of(ds) + "/rendered", Accept="image/png")
    assert_close(img, reference(ds, 0, (0, 1000)), "file window")
    explicit, _, _ = await get_image(client, path_of(ds) + "/rendered?window=0,1000,linear",
                                     Accept="image/png")
    assert np.array_equal(np.asarray(img), np.asarray(explicit))


async def test_without_window_the_frame_range_is_shown(client) -> None:
    ds = noise(32, 32)
    await stow(client, synth.encode(ds))
    img, _, _ = await get_image(client, path_of(ds) + "/rendered", Accept="image/png")
    arr = np.frombuffer(ds.PixelData, "<u2").reshape(32, 32).astype(np.float64)
    expected = (arr - arr.min()) * 255 / (arr.max() - arr.min())
    assert_close(img, expected, "min/max")
    assert np.asarray(img).min() == 0 and np.asarray(img).max() == 255


async def test_monochrome1_is_inverted(client) -> None:
    mono2, mono1 = noise(32, 32), noise(32, 32)
    mono1.PhotometricInterpretation = "MONOCHROME1"
    await stow(client, synth.encode(mono2), synth.encode(mono1))
    for query in ("?window=2048,2000,linear", ""):
        a, _, _ = await get_image(client, path_of(mono2) + "/rendered" + query, Accept="image/png")
        b, _, _ = await get_image(client, path_of(mono1) + "/rendered" + query, Accept="image/png")
        total = np.asarray(a).astype(int) + np.asarray(b).astype(int)
        assert np.all(np.abs(total - 255) <= 1), query


@pytest.mark.parametrize("function", ["linear-exact", "sigmoid"])
async def test_window_functions(client, function: str) -> None:
    ds = noise(32, 32)
    await stow(client, synth.encode(ds))
    img, _, _ = await get_image(client, path_of(ds) + f"/rendered?window=2000,1500,{function}",
                                Accept="image/png")
    x = np.frombuffer(ds.PixelData, "<u2").reshape(32, 32).astype(np.float64)
    if function == "sigmoid":  # PS3.3 C.11.2.1.3.1
        expected = 255 / (1 + np.exp(-4 * (x - 2000) / 1500))
    else:  # PS3.3 C.11.2.1.3.2
        expected = np.clip(((x - 2000) / 1500 + 0.5) * 255, 0, 255)
    assert_close(img, expected, function)


async def test_modality_lut_sequence_and_voi_lut_sequence(client) -> None:
    ds = noise(32, 32)
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    # An inverting Modality LUT, as OW (little endian words); the VOI LUT as US values.
    lut.add_new(0x00283006, "OW", (4095 - np.arange(4096)).astype("<u2").tobytes())
    ds.ModalityLUTSequence = Sequence([lut])
    voi = Dataset()
    voi.LUTDescriptor = [4096, 0, 12]
    voi.add_new(0x00283006, "US", [min(4095, i * 2) for i in range(4096)])
    ds.VOILUTSequence = Sequence([voi])
    await stow(client, synth.encode(ds))
    back = dcmread(BytesIO(synth.encode(ds)))
    values = apply_modality_lut(back.pixel_array, back)
    expected = apply_voi(values, back).astype(np.float64) * 255 / 4095
    img, _, _ = await get_image(client, path_of(ds) + "/rendered", Accept="image/png")
    assert_close(img, expected, "modality + VOI LUT sequences")


async def test_enhanced_multiframe_uses_each_frames_functional_groups(client) -> None:
    """Per-frame Pixel Value Transformation (intercepts 0, 100, 200), a shared Frame VOI LUT,
    and a per-frame one for the third frame (PS3.3 C.7.6.16.2.9, C.7.6.16.2.10)."""
    ds = image(synth.uid(), synth.uid(), [1000, 1000, 1000], rows=16, columns=16, window=None)

    def group(**items: Dataset) -> Dataset:
        g = Dataset()
        for name, item in items.items():
            setattr(g, name, Sequence([item]))
        return g

    def pvt(intercept: float) -> Dataset:
        item = Dataset()
        item.RescaleSlope, item.RescaleIntercept, item.RescaleType = 1, intercept, "US"
        return item

    def voi(center: float, width: float) -> Dataset:
        item = Dataset()
        item.WindowCenter, item.WindowWidth = center, width
        return item

    ds.SharedFunctionalGroupsSequence = Sequence([group(FrameVOILUTSequence=voi(1000, 2000))])
    ds.PerFrameFunctionalGroupsSequence = Sequence([
        group(PixelValueTransformationSequence=pvt(0)),
        group(PixelValueTransformationSequence=pvt(100)),
        group(PixelValueTransformationSequence=pvt(200), FrameVOILUTSequence=voi(1200, 10))])
    await stow(client, synth.encode(ds))
    expected = [gray(1000), gray(1100), gray(1200, (1200, 10))]
    for n, value in enumerate(expected, start=1):
        img, _, _ = await get_image(client, path_of(ds) + f"/frames/{n}/rendered", Accept="image/png")
        assert abs(mean(img) - value) <= 1, (n, mean(img), value)


# -- viewport, quality, media types ----------------------------------------------------------------


async def test_viewport_scales_to_fit_keeping_the_aspect_ratio(client) -> None:
    ds = noise(64, 128)  # 128 wide, 64 high
    await stow(client, synth.encode(ds))
    url = path_of(ds) + "/rendered"
    for viewport, size in [("64,64", (64, 32)), ("512,100", (200, 100)), ("128,64", (128, 64))]:
        img, _, _ = await get_image(client, f"{url}?viewport={viewport}", Accept="image/png")
        assert img.size == size, viewport


async def test_viewport_source_region_and_flips(client) -> None:
    ds = noise(64, 128)
    await stow(client, synth.encode(ds))
    url = path_of(ds) + "/rendered?window=2048,4096"
    full = np.asarray((await get_image(client, url, Accept="image/png"))[0])
    region = full[4:14, 8:28]
    cases = [("20,10,8,4,20,10", region), ("20,10,8,4,-20,10", region[:, ::-1]),
             ("20,10,8,4,20,-10", region[::-1, :]), ("120,64,8,,,", full[:, 8:])]
    for viewport, expected in cases:
        img, _, _ = await get_image(client, f"{url}&viewport={viewport}", Accept="image/png")
        assert np.array_equal(np.asarray(img), expected), viewport


async def test_quality_changes_the_jpeg(client) -> None:
    ds = noise()
    await stow(client, synth.encode(ds))
    url = path_of(ds) + "/rendered"
    sizes = {}
    for q in (10, 95):
        img, body, ctype = await get_image(client, f"{url}?quality={q}", Accept="image/jpeg")
        assert ctype == "image/jpeg" and img.format == "JPEG" and img.size == (256, 256)
        sizes[q] = len(body)
    assert sizes[10] * 2 < sizes[95], sizes


@pytest.mark.parametrize("headers,query,media_type", [
    ({}, "", "image/jpeg"),
    ({"Accept": "*/*"}, "", "image/jpeg"),
    ({"Accept": "image/*"}, "", "image/jpeg"),
    ({"Accept": "image/png"}, "", "image/png"),
    ({"Accept": "image/gif"}, "", "image/gif"),
    ({"Accept": "image/webp, image/png;q=0.5"}, "", "image/png"),
    # a browser's <img>
    ({"Accept": "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"}, "", "image/jpeg"),
    # the accept query parameter wins over the header (PS3.18 §8.3.3.1)
    ({"Accept": "application/dicom"}, "?accept=image/png", "image/png"),
    # OHIF thumbnails through dicomweb-client's retrieveBulkData
    ({"Accept": "multipart/related; type=application/octet-stream"}, "?accept=image/jpeg", "image/jpeg"),
    ({"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}, "",
     "image/jpeg"),
    ({"Accept": "application/octet-stream"}, "", "image/jpeg"),
])
async def test_media_type_negotiation(client, study: Study, headers: dict, query: str,
                                      media_type: str) -> None:
    urls = [study.url, study.series_url(study.images[0]), path_of(study.images[1])]
    for resource in ("rendered", "thumbnail"):
        for url in urls:
            img, _, ctype = await get_image(client, f"{url}/{resource}{query}", **headers)
            assert ctype == media_type, (url, resource)
            assert img.format == media_type.split("/")[1].upper()


# -- levels ----------------------------------------------------------------------------------------


async def test_study_and_series_rendered(client, study: Study) -> None:
    # A single image: the representative one (middle instance of the first image series).
    img, _, _ = await get_image(client, study.url + "/rendered", Accept="image/png")
    assert img.size == (200, 100) and abs(mean(img) - gray(1000)) <= 1
    # multipart: the first frame of each image instance, in series and instance order (no SR).
    resp = await client.get(study.url + "/rendered",
                            headers={"Accept": 'multipart/related; type="image/png"'})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith('multipart/related; type="image/png"; boundary=')
    parts = parse_multipart(await resp.read(), resp.headers["Content-Type"])
    assert [h["Content-Type"] for h, _ in parts] == ["image/png"] * 4
    means = [mean(Image.open(BytesIO(data))) for _, data in parts]
    assert np.allclose(means, [gray(500), gray(1000), gray(1500), gray(300)], atol=1)
    resp = await client.get(study.series_url(study.cine) + "/rendered",
                            headers={"Accept": "multipart/related; type=image/jpeg"})
    assert len(parse_multipart(await resp.read(), resp.headers["Content-Type"])) == 1


async def test_multiframe_instance_and_frames(client, study: Study, monkeypatch) -> None:
    url = path_of(study.cine)
    values = [300, 600, 900, 1200, 1500]
    img, _, _ = await get_image(client, url + "/rendered", Accept="image/png")
    assert abs(mean(img) - gray(300)) <= 1  # the first frame
    resp = await client.get(url + "/rendered", headers={"Accept": 'multipart/related; type="image/png"'})
    parts = parse_multipart(await resp.read(), resp.headers["Content-Type"])
    assert np.allclose([mean(Image.open(BytesIO(d))) for _, d in parts], [gray(v) for v in values], atol=1)
    # one frame; several as multipart (*/*) or an animated GIF
    img, _, _ = await get_image(client, url + "/frames/4/rendered", Accept="image/png")
    assert abs(mean(img) - gray(1200)) <= 1
    resp = await client.get(url + "/frames/2,5/rendered")
    parts = parse_multipart(await resp.read(), resp.headers["Content-Type"])
    assert np.allclose([mean(Image.open(BytesIO(d))) for _, d in parts], [gray(600), gray(1500)], atol=2)
    for path, frames in ((url + "/rendered", 5), (url + "/frames/1,3/rendered", 2)):
        img, _, ctype = await get_image(client, path, Accept="image/gif")
        assert ctype == "image/gif" and img.n_frames == frames and img.is_animated
    resp = await client.get(url + "/frames/1,2/rendered", headers={"Accept": "image/jpeg"})
    assert resp.status == 406 and "multipart/related" in await resp.text()
    # Memory: a frame request decodes that frame only.
    counter = Counter(monkeypatch)
    await get_image(client, url + "/frames/5/rendered")
    assert counter.calls == [[4]]


async def test_one_frame_is_read_from_the_file(client, study: Study, monkeypatch) -> None:
    """pydicom's iter_pixels is asked for the one frame (it reads only that frame's bytes)."""
    asked: list[list[int]] = []
    original = render.iter_pixels

    def spy(src, **kwargs):
        asked.append(list(kwargs["indices"]))
        return original(src, **kwargs)

    monkeypatch.setattr(render, "iter_pixels", spy)
    await get_image(client, path_of(study.cine) + "/frames/3/rendered")
    await get_image(client, path_of(study.cine) + "/thumbnail")
    assert asked == [[2], [2]]


# -- thumbnails ------------------------------------------------------------------------------------


async def test_thumbnails_at_every_level_and_cached(client, study: Study, archive_config,
                                                    monkeypatch) -> None:
    counter = Counter(monkeypatch)
    cases = [  # (path, expected gray): study -> middle instance of the first image series,
        (study.url, gray(1000)),  # series -> its middle instance, instance -> its middle frame
        (study.series_url(study.images[0]), gray(1000)),
        (study.series_url(study.cine), gray(900)),
        (path_of(study.images[2]), gray(1500)),
        (path_of(study.cine), gray(900)),
        (path_of(study.cine) + "/frames/2", gray(600)),
    ]
    for path, expected in cases:
        img, body, ctype = await get_image(client, path + "/thumbnail")
        assert ctype == "image/jpeg" and img.format == "JPEG"
        assert img.size == (128, 64), path  # 200x100 fitted in 128x128
        assert abs(mean(img) - expected) <= 2, (path, mean(img), expected)
    decoded = len(counter.calls)
    # Thumbnails are keyed by the stored file, frame and parameters: the study and its first
    # image series share one (same instance), and so do the cine series and its instance.
    assert decoded == 4
    cache = archive_config.thumbnail_cache_path
    assert cache == archive_config.storage_path.parent / "cache" / "thumbnails"
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert len(files) == 4 and not [p for p in files if p.name.startswith(".tmp")]
    for path, _ in cases:  # served from the cache: nothing decoded
        first = await client.get(path + "/thumbnail")
        assert first.status == 200
    assert len(counter.calls) == decoded
    # Another size or media type is another thumbnail.
    img, _, _ = await get_image(client, study.url + "/thumbnail?viewport=64,64")
    assert img.size == (64, 32) and len(counter.calls) == decoded + 1
    img, _, ctype = await get_image(client, study.url + "/thumbnail", Accept="image/png")
    assert ctype == "image/png" and len(counter.calls) == decoded + 2


async def test_small_images_are_not_enlarged(client) -> None:
    ds = noise(16, 16)
    await stow(client, synth.encode(ds))
    img, _, _ = await get_image(client, path_of(ds) + "/thumbnail")
    assert img.size == (16, 16)


async def test_thumbnail_cache_is_not_stale_after_an_overwrite(aiohttp_client, tmp_path) -> None:
    cfg = make_config(tmp_path, ingest={"duplicate_policy": "overwrite"})
    client = await aiohttp_client(create_app(cfg))
    first = image(synth.uid(), synth.uid(), [500])
    await stow(client, synth.encode(first))
    img, _, _ = await get_image(client, path_of(first) + "/thumbnail")
    assert abs(mean(img) - gray(500)) <= 2
    second = image(first.StudyInstanceUID, first.SeriesInstanceUID, [1500])
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    await stow(client, synth.encode(second))
    for path in (path_of(first), f"/dicom-web/studies/{first.StudyInstanceUID}"):
        img, _, _ = await get_image(client, path + "/thumbnail")
        assert abs(mean(img) - gray(1500)) <= 2, path


async def test_thumbnail_cache_can_be_turned_off(aiohttp_client, tmp_path, monkeypatch) -> None:
    cfg = make_config(tmp_path, render={"thumbnail_cache": False, "thumbnail_size": 50})
    client = await aiohttp_client(create_app(cfg))
    ds = image(synth.uid(), synth.uid(), [500])
    await stow(client, synth.encode(ds))
    counter = Counter(monkeypatch)
    for _ in range(2):
        img, _, _ = await get_image(client, path_of(ds) + "/thumbnail")
        assert img.size == (50, 25)
    assert len(counter.calls) == 2 and not cfg.thumbnail_cache_path.exists()


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", [
    "window=abc", "window=40", "window=40,0", "window=40,0.5,linear", "window=40,400,cubic",
    "window=nan,400", "window=40,400&window=50,400", "window=1,2,3,4",
    "viewport=0,0", "viewport=10", "viewport=a,b", "viewport=10,10,-1,0", "viewport=10,10,0,0,0,5",
    "viewport=99999,10", "viewport=10,10,1000,1000",
    "quality=500", "quality=0", "quality=abc",
])
async def test_bad_parameters_are_400(client, study: Study, query: str) -> None:
    for resource in ("rendered", "thumbnail"):
        resp = await client.get(f"{path_of(study.images[0])}/{resource}?{query}")
        assert resp.status == 400, (resource, query, await resp.text())
        assert (await resp.text()).split(":")[0] in ("window", "window center", "window width",
                                                      "viewport", "viewport sx", "quality")


@pytest.mark.parametrize("headers,query", [
    ({"Accept": "application/dicom"}, ""),
    ({"Accept": "text/html"}, ""),
    ({"Accept": 'multipart/related; type="application/dicom"'}, ""),
    ({}, "?accept=image/bmp"),
    ({"Accept": "image/jpeg"}, "?accept=application/dicom%2Bjson"),
])
async def test_unacceptable_media_types_are_406(client, study: Study, headers: dict, query: str) -> None:
    for resource in ("rendered", "thumbnail"):
        resp = await client.get(f"{path_of(study.images[0])}/{resource}{query}", headers=headers)
        assert resp.status == 406, (resource, headers, query)
        assert "image/jpeg" in await resp.text()


async def test_not_found_and_not_images(client, study: Study) -> None:
    unknown = "1.2.3.4.5.6.7.8.9"
    for resource in ("rendered", "thumbnail"):
        for path, status, text in [
            (f"/dicom-web/studies/{unknown}", 404, "no such"),
            (study.series_url(study.sr), 404, "no instance with pixel data"),
            (path_of(study.sr), 404, "has no pixel data"),
            (path_of(study.cine) + "/frames/6", 404, "frame 6 does not exist"),
            (path_of(study.cine) + "/frames/0", 400, "frames"),
            (path_of(study.cine) + "/frames/1,x", 400, "frames"),
            ("/dicom-web/studies/1.02.3", 400, "not a valid UID"),
        ]:
            resp = await client.get(f"{path}/{resource}")
            assert resp.status == status, (path, resource)
            assert text in await resp.text(), (path, resource)


async def test_unrenderable_representative_falls_back_to_the_next_series(client) -> None:
    """A study whose first image series cannot be decoded gets its thumbnail from the next."""
    samples = {s.name: s for s in storable()}
    undecodable = samples.get("transfer-syntax/CT_JPEGProcess6_8.dcm")
    if undecodable is None:
        pytest.skip("needs the shared samples (a file pydicom cannot decode)")
    bad = dcmread(undecodable.path)
    good = image(bad.StudyInstanceUID, synth.uid(), [1000], series_number=int(bad.SeriesNumber or 0) + 1)
    await stow(client, undecodable.path.read_bytes(), synth.encode(good))
    img, _, _ = await get_image(client, f"/dicom-web/studies/{bad.StudyInstanceUID}/thumbnail")
    assert abs(mean(img) - gray(1000)) <= 2
    resp = await client.get(path_of(bad) + "/thumbnail")
    assert resp.status == 406 and "not supported" in await resp.text()


# -- configuration ---------------------------------------------------------------------------------


def test_render_config(tmp_path: Path) -> None:
    from archive.config import ConfigError, from_dict

    cfg = from_dict({}, base_dir=tmp_path)
    assert (cfg.render.thumbnail_size, cfg.render.jpeg_quality, cfg.render.thumbnail_cache) == \
        (128, 90, True)
    assert cfg.thumbnail_cache_path == tmp_path / "archive-data" / "cache" / "thumbnails"
    cfg = from_dict({"render": {"cache_path": "thumbs"}}, base_dir=tmp_path)
    assert cfg.thumbnail_cache_path == tmp_path / "thumbs"
    for bad in ({"thumbnail_size": 0}, {"jpeg_quality": 101}, {"thumbnail_cache": "yes"},
                {"thumbnail_size": "128"}, {"size": 1}):
        with pytest.raises(ConfigError, match="render"):
            from_dict({"render": bad}, base_dir=tmp_path)
