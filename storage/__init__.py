"""Blob storage for imaging-archive: bytes under keys, nothing of DICOM.

Backends implement :class:`storage.base.BlobStore`. The archive chooses keys; a backend only
promises that a committed blob is durable and complete, and that a blob never appears half-written.
"""

from storage.base import BlobStore, BlobWriter, InvalidKeyError, StorageError, StorageFullError
from storage.filesystem import FilesystemStore

__all__ = [
    "BlobStore",
    "BlobWriter",
    "FilesystemStore",
    "InvalidKeyError",
    "StorageError",
    "StorageFullError",
]
