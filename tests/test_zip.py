"""Study and series retrieve as a zip (``Accept: application/zip``), streamed."""

from __future__ import annotations

import io
import zipfile

from tests.test_wado import _store


async def _zip(client, url: str) -> zipfile.ZipFile:
    resp = await client.get(url, headers={"Accept": "application/zip"})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "application/zip"
    assert "attachment" in resp.headers["Content-Disposition"]
    zf = zipfile.ZipFile(io.BytesIO(await resp.read()))
    assert zf.testzip() is None  # every entry's CRC matches its bytes
    return zf


async def test_study_zip_has_every_file_byte_identical_in_uid_folders(client) -> None:
    stored = await _store(client)
    zf = await _zip(client, f"/dicom-web/studies/{stored.study}")
    expected = {f"{stored.study}/{stored.series_of[sop]}/{sop}.dcm": data
                for sop, data in stored.files.items()}
    assert sorted(zf.namelist()) == sorted(expected)
    for name, data in expected.items():
        assert zf.read(name) == data


async def test_series_zip_holds_only_that_series(client) -> None:
    stored = await _store(client)
    series = stored.series[0]
    zf = await _zip(client, f"/dicom-web/studies/{stored.study}/series/{series}")
    assert sorted(zf.namelist()) == sorted(f"{stored.study}/{series}/{sop}.dcm"
                                           for sop in stored.in_series(series))


async def test_zip_is_chosen_only_when_preferred(client) -> None:
    stored = await _store(client)
    resp = await client.get(f"/dicom-web/studies/{stored.study}",
                            headers={"Accept": "multipart/related; type=\"application/dicom\", "
                                               "application/zip;q=0.5"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("multipart/related")


async def test_zip_of_unknown_study_is_404(client) -> None:
    resp = await client.get("/dicom-web/studies/1.2.3.4", headers={"Accept": "application/zip"})
    assert resp.status == 404


async def test_zip_of_one_instance_is_not_offered(client) -> None:
    stored = await _store(client)
    sop = next(iter(stored.files))
    resp = await client.get(f"/dicom-web/studies/{stored.study}/series/{stored.series_of[sop]}"
                            f"/instances/{sop}", headers={"Accept": "application/zip"})
    assert resp.status == 406
    assert "application/dicom" in await resp.text()
