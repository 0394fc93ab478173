"""What a reader needs to know about an instance's pixels, taken from its stored DICOM JSON
(PS3.3 C.7.6.3 Image Pixel Module), so frame and rendering requests need no file parse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _first(meta: dict[str, Any], tag: str, default: Any = None) -> Any:
    value = meta.get(tag, {}).get("Value")
    return value[0] if value else default


def _int(meta: dict[str, Any], tag: str, default: int) -> int:
    try:
        return int(_first(meta, tag, default))
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True)
class Geometry:
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int  # 0 unsigned, 1 two's complement
    photometric: str
    planar_configuration: int
    number_of_frames: int

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> Geometry:
        bits = _int(meta, "00280100", 8)
        return cls(rows=_int(meta, "00280010", 0), columns=_int(meta, "00280011", 0),
                   samples_per_pixel=_int(meta, "00280002", 1), bits_allocated=bits,
                   bits_stored=_int(meta, "00280101", bits),
                   pixel_representation=_int(meta, "00280103", 0),
                   photometric=str(_first(meta, "00280004", "MONOCHROME2") or "MONOCHROME2").strip(),
                   planar_configuration=_int(meta, "00280006", 0),
                   number_of_frames=max(1, _int(meta, "00280008", 1)))

    @property
    def frame_length(self) -> int:
        """Bytes of one native frame (PS3.5 §8.1.1; YBR_FULL_422 native keeps 2 values/pixel)."""
        samples = 2 if self.photometric == "YBR_FULL_422" else self.samples_per_pixel
        bits = self.rows * self.columns * samples * self.bits_allocated
        if self.bits_allocated == 1:
            return (bits + 7) // 8  # callers handle bit-packed frames that straddle bytes
        return bits // 8
