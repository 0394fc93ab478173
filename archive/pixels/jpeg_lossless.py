"""A JPEG Lossless encoder, Process 14 with Selection Value 1 (ITU-T T.81 Annex H; DICOM transfer
syntax 1.2.840.10008.1.2.4.70, PS3.5 §8.2.1), written with numpy.

pydicom has no encoder for it, and GDCM's refuses 8-bit images of odd width (and its codecs can
abort the process on input they dislike), so the archive encodes it itself: the format is
small. Each sample is predicted by its left neighbour (the first row by its left neighbour, the
first column by the sample above, the first sample by 2^(P-1)); the differences are Huffman
coded with a table optimal for the frame (T.81 Annex K.2), all components interleaved in one
scan with one table.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

# Samples per packing step: bounds the temporary arrays (about 40 bytes per coded bit).
_CHUNK = 1 << 18


def _code_lengths(freq: np.ndarray[Any, Any]) -> dict[int, int]:
    """Huffman code lengths of the symbols with a non-zero frequency, plus the reserved symbol
    256 (frequency 1) that keeps the all-ones code word unused (T.81 K.2)."""
    symbols = [(int(f), s) for s, f in enumerate(freq) if f] + [(1, 256)]
    if len(symbols) == 1:
        return {256: 1}
    heap: list[tuple[int, int, list[int]]] = [(f, i, [s]) for i, (f, s) in enumerate(symbols)]
    heapq.heapify(heap)
    lengths = {s: 0 for _, s in symbols}
    order = len(heap)
    while len(heap) > 1:
        f1, _, a = heapq.heappop(heap)
        f2, _, b = heapq.heappop(heap)
        for s in a + b:
            lengths[s] += 1
        heapq.heappush(heap, (f1 + f2, order, a + b))
        order += 1
    return lengths


def _huffman_table(freq: np.ndarray[Any, Any]) -> tuple[list[int], list[int]]:
    """BITS (count of codes of each length 1..16) and HUFFVAL (symbols by code length) of an
    optimal table for ``freq`` (17 difference categories), lengths limited to 16 (T.81 K.2)."""
    lengths = _code_lengths(freq)
    longest = max(lengths.values())
    if lengths[256] != longest:  # the reserved symbol must take the last (all-ones) code
        other = next(s for s, n in lengths.items() if n == longest)
        lengths[other], lengths[256] = lengths[256], longest
    order = sorted(lengths, key=lambda s: (lengths[s], s == 256, s))
    bits = [0] * 33
    for s in order:
        bits[lengths[s]] += 1
    for i in range(32, 16, -1):  # T.81 Figure K.3, Adjust_BITS
        while bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
    i = 16
    while bits[i] == 0:
        i -= 1
    bits[i] -= 1  # drop the reserved symbol (last in ``order``)
    return bits[1:17], order[:-1]


def _codes(bits: list[int], huffval: list[int]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Code word and length of each symbol 0..16 (T.81 Annex C, canonical codes)."""
    code_of = np.zeros(17, dtype=np.uint64)
    length_of = np.zeros(17, dtype=np.int64)
    code, k = 0, 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            code_of[huffval[k]] = code
            length_of[huffval[k]] = length
            code += 1
            k += 1
        code <<= 1
    return code_of, length_of


def _differences(arr: np.ndarray[Any, Any], precision: int) -> np.ndarray[Any, Any]:
    """Prediction differences (T.81 H.1.2.1, predictor 1), in scan order, within -32767..32768."""
    planes = arr if arr.ndim == 3 else arr[:, :, None]
    x = planes.astype(np.int64) & ((1 << precision) - 1)
    pred = np.empty_like(x)
    pred[0, 0, :] = 1 << (precision - 1)
    pred[0, 1:, :] = x[0, :-1, :]
    pred[1:, 0, :] = x[:-1, 0, :]
    pred[1:, 1:, :] = x[1:, :-1, :]
    diff = (x - pred) & 0xFFFF
    diff[diff > 32768] -= 65536  # modulo 2^16; 32768 is category 16 with no extra bits
    return diff.ravel()


def _categories(diff: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """SSSS: the number of bits of |diff| (T.81 Table H.2)."""
    _, exponent = np.frexp(np.abs(diff).astype(np.float64))  # |d| = m * 2**e, 0.5 <= m < 1
    return exponent.astype(np.int64)


def _pack(values: np.ndarray[Any, Any], lengths: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The bits of each value (its ``lengths`` low bits, most significant first), concatenated,
    one bit per uint8."""
    total = int(lengths.sum())
    starts = np.cumsum(lengths) - lengths
    rep_values = np.repeat(values, lengths)
    shift = np.repeat(lengths - 1 + starts, lengths) - np.arange(total, dtype=np.int64)
    return ((rep_values >> shift.astype(np.uint64)) & np.uint64(1)).astype(np.uint8)


def encode(arr: np.ndarray[Any, Any], bits_stored: int) -> bytes:
    """One frame — (rows, columns) or (rows, columns, samples), unsigned or two's complement
    integers of at most 16 bits — as a JPEG Lossless SV1 code stream with precision
    ``bits_stored`` (at least 2, T.81 B.2.2)."""
    if arr.ndim not in (2, 3) or not 1 <= bits_stored <= 16:
        raise ValueError("JPEG Lossless takes 2-D frames of 1 to 16 bits")
    precision = max(2, bits_stored)
    rows, columns = arr.shape[:2]
    components = 1 if arr.ndim == 2 else arr.shape[2]
    if not (rows and columns) or rows > 65535 or columns > 65535 or components > 4:
        raise ValueError(f"a {rows}x{columns}x{components} frame cannot be JPEG coded")
    diff = _differences(arr, precision)
    ssss = _categories(diff)
    bits, huffval = _huffman_table(np.bincount(ssss, minlength=17))
    code_of, length_of = _codes(bits, huffval)
    # Additional bits: the difference's low SSSS bits, minus one when negative (T.81 F.1.2.1.1);
    # none for category 16.
    extra = np.where(diff < 0, diff - 1, diff) & ((np.int64(1) << ssss) - 1)
    extra_len = np.where(ssss == 16, 0, ssss)
    words = (code_of[ssss] << extra_len.astype(np.uint64)) | extra.astype(np.uint64)
    word_len = length_of[ssss] + extra_len
    chunks = [_pack(words[i:i + _CHUNK], word_len[i:i + _CHUNK]) for i in range(0, len(words), _CHUNK)]
    stream = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    stream = np.concatenate([stream, np.ones(-len(stream) % 8, np.uint8)])  # pad with 1-bits (F.1.2.3)
    data = np.packbits(stream).tobytes().replace(b"\xff", b"\xff\x00")  # byte stuffing (F.1.2.3)
    return b"".join([
        b"\xff\xd8",  # SOI
        b"\xff\xc4", (3 + 16 + len(huffval)).to_bytes(2, "big"), b"\x00", bytes(bits), bytes(huffval),
        b"\xff\xc3", (8 + 3 * components).to_bytes(2, "big"), bytes([precision]),
        rows.to_bytes(2, "big"), columns.to_bytes(2, "big"), bytes([components]),
        b"".join(bytes([c + 1, 0x11, 0]) for c in range(components)),  # SOF3: lossless, Huffman
        b"\xff\xda", (6 + 2 * components).to_bytes(2, "big"), bytes([components]),
        b"".join(bytes([c + 1, 0x00]) for c in range(components)),
        b"\x01\x00\x00",  # SOS: Ss = predictor 1, Se = 0, Ah/Al = 0 (no point transform)
        data,
        b"\xff\xd9",  # EOI
    ])
