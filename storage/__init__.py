"""Blob storage for imaging-archive: bytes under keys, nothing of DICOM.

Backends implement :class:`storage.base.BlobStore`: :class:`FilesystemStore` (files in a folder)
and :class:`S3Store` (objects of an S3-compatible bucket; imported on first use, since boto3 is
only needed by archives that use it). The archive chooses keys; a backend only promises that a
committed blob is durable and complete, and that a blob never appears half-written.
"""

from typing import Any

from storage.base import BlobStore, BlobWriter, InvalidKeyError, StorageError, StorageFullError
from storage.filesystem import FilesystemStore

__all__ = [
    "BlobStore",
    "BlobWriter",
    "FilesystemStore",
    "InvalidKeyError",
    "S3Store",
    "StorageError",
    "StorageFullError",
]


def __getattr__(name: str) -> Any:
    if name == "S3Store":
        from storage.s3 import S3Store

        return S3Store
    raise AttributeError(f"module 'storage' has no attribute {name!r}")
