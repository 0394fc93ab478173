"""The archive as a third-party DICOMweb client sees it: ``dicomweb-client`` against a real
``imaging-archive serve`` subprocess."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from dicomweb_client import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless

from tests.conftest import LiveServer
from tests.samples import storable

# One sample of each of these transfer syntaxes (those the samples have), native and encapsulated.
_WANTED_TS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless)


def _pick_samples() -> list[Dataset]:
    chosen: dict[str, Dataset] = {}
    seen: set[str] = set()
    for sample in storable():
        ds = dcmread(sample.path)
        ts = ds.file_meta.TransferSyntaxUID
        if ts not in _WANTED_TS or ts in chosen or "PixelData" not in ds or ds.SOPInstanceUID in seen:
            continue
        seen.add(ds.SOPInstanceUID)
        chosen[ts] = ds
    return list(chosen.values())


@dataclass
class Loaded:
    client: DICOMwebClient
    datasets: list[Dataset]
    response: Dataset


@pytest.fixture
def loaded(live_server: LiveServer) -> Loaded:
    client = DICOMwebClient(url=live_server.url + "/dicom-web")
    datasets = _pick_samples()
    assert len(datasets) >= 2
    return Loaded(client, datasets, client.store_instances(datasets))


def test_store_instances_response(loaded: Loaded) -> None:
    response = loaded.response
    assert "FailedSOPSequence" not in response
    refs = response.ReferencedSOPSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [ds.SOPInstanceUID for ds in loaded.datasets]
    for ref, ds in zip(refs, loaded.datasets, strict=True):
        assert ref.ReferencedSOPClassUID == ds.SOPClassUID
        assert ref.RetrieveURL.startswith(loaded.client.base_url + f"/studies/{ds.StudyInstanceUID}/")


def test_search(loaded: Loaded) -> None:
    client = loaded.client
    studies = client.search_for_studies()
    assert {s["0020000D"]["Value"][0] for s in studies} == {ds.StudyInstanceUID for ds in loaded.datasets}
    for ds in loaded.datasets:
        found = client.search_for_studies(search_filters={"StudyInstanceUID": ds.StudyInstanceUID})
        assert [s["0020000D"]["Value"][0] for s in found] == [ds.StudyInstanceUID]
        if ds.get("PatientID"):
            found = client.search_for_studies(search_filters={"PatientID": ds.PatientID})
            assert ds.StudyInstanceUID in {s["0020000D"]["Value"][0] for s in found}
        series = client.search_for_series(study_instance_uid=ds.StudyInstanceUID,
                                          search_filters={"Modality": ds.Modality})
        assert ds.SeriesInstanceUID in {s["0020000E"]["Value"][0] for s in series}
        assert all(s["00080060"]["Value"] == [ds.Modality] for s in series)
        instances = client.search_for_instances(search_filters={"SOPInstanceUID": ds.SOPInstanceUID})
        assert len(instances) == 1
        assert instances[0]["00080016"]["Value"] == [ds.SOPClassUID]
        instances = client.search_for_instances(study_instance_uid=ds.StudyInstanceUID,
                                                series_instance_uid=ds.SeriesInstanceUID)
        assert ds.SOPInstanceUID in {i["00080018"]["Value"][0] for i in instances}
    assert client.search_for_studies(search_filters={"StudyInstanceUID": "1.2.3.4.5.6"}) == []
    limited = client.search_for_instances(limit=1)
    assert len(limited) == 1


def test_retrieve(loaded: Loaded) -> None:
    client = loaded.client
    for ds in loaded.datasets:
        uids = {"study_instance_uid": ds.StudyInstanceUID, "series_instance_uid": ds.SeriesInstanceUID}
        back = client.retrieve_instance(sop_instance_uid=ds.SOPInstanceUID, **uids)
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        assert back.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert back.PixelData == ds.PixelData

        series = client.retrieve_series(**uids)
        assert ds.SOPInstanceUID in {s.SOPInstanceUID for s in series}
        assert {s.SeriesInstanceUID for s in series} == {ds.SeriesInstanceUID}

        series_meta = client.retrieve_series_metadata(**uids)
        assert len(series_meta) == len(series)
        assert {m["00080018"]["Value"][0] for m in series_meta} == {s.SOPInstanceUID for s in series}

        meta = client.retrieve_instance_metadata(sop_instance_uid=ds.SOPInstanceUID, **uids)
        assert meta["00080018"]["Value"] == [ds.SOPInstanceUID]
        assert meta["0020000D"]["Value"] == [ds.StudyInstanceUID]
        pixel = meta["7FE00010"]
        if "BulkDataURI" in pixel:
            # dicomweb-client sends "Host: 127.0.0.1" without the port (it sets Host to the bare
            # host name), so the absolute URI the server builds from it lacks the port too; the
            # path is what the server decides, and it is checked in full.
            uri = pixel["BulkDataURI"]
            path = (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                    f"/instances/{ds.SOPInstanceUID}/bulk/7FE00010")
            assert urlsplit(uri).scheme == "http" and urlsplit(uri).hostname == client.host
            assert urlsplit(uri).path == path
            (value,) = client.retrieve_bulkdata(client.base_url + path.removeprefix("/dicom-web"))
            assert value == ds.PixelData  # encapsulated: the value field, items and fragments
