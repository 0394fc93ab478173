"""Pixel services: frame geometry and extraction, transcoding, rendering (PS3.18 §10.4, §8.3.5).

GDCM is not a dependency, but pydicom tries it first whenever ``python-gdcm`` happens to be
installed, and its codecs abort the whole process on some inputs (seen on odd-width RLE and on
1-bit-stored JPEG Lossless): a server must not die on a file it accepted. Its plugins are removed
from pydicom's decoders and encoders here, so only the pylibjpeg/pyjpegls/pydicom codecs run.
"""

from __future__ import annotations

from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import AllTransferSyntaxes


def _drop_gdcm() -> None:
    for uid in AllTransferSyntaxes:
        for lookup in (get_decoder, get_encoder):
            try:
                coder = lookup(uid)
            except NotImplementedError:  # no decoder/encoder for this syntax at all
                continue
            if "gdcm" in coder.available_plugins:
                coder.remove_plugin("gdcm")


_drop_gdcm()
