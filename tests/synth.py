"""Synthetic DICOM instances made with pydicom, for tests that need chosen UIDs or sizes."""

from __future__ import annotations

from io import BytesIO

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as generate_uid uses


def uid() -> str:
    return str(generate_uid(prefix=ROOT))


def dataset(study: str | None = None, series: str | None = None, sop: str | None = None,
            rows: int = 8, columns: int = 8, frames: int = 1, patient_id: str = "SYNTH-1",
            patient_name: str = "Synth^Test", modality: str = "CT", instance_number: int = 1,
            fill: int | None = None) -> Dataset:
    """A small CT instance (16-bit MONOCHROME2, explicit VR little endian) with a File Meta."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop or uid()
    ds.StudyInstanceUID = study or uid()
    ds.SeriesInstanceUID = series or uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    count = rows * columns * frames
    if fill is None:
        pixels = (np.arange(count, dtype=np.uint32) % 65521).astype("<u2")
    else:
        pixels = np.full(count, fill, dtype="<u2")
    ds.PixelData = pixels.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.preamble = b"\0" * 128  # so that any dcmwrite (dicomweb-client's too) writes a PS3.10 file
    return ds


def encode(ds: Dataset) -> bytes:
    """The PS3.10 file of ``ds`` (preamble, DICM, File Meta, data set)."""
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def instance(**kwargs: object) -> bytes:
    return encode(dataset(**kwargs))  # type: ignore[arg-type]
