"""RLE and the submission CSV: encode/decode masks, write, read and validate `ImageId,EncodedPixels` files."""

from kit.submission.rle import (
    decode_labels,
    decode_labels_reference,
    decode_rle,
    decode_rle_reference,
    encode_labels,
    encode_labels_reference,
    encode_mask,
)

__all__ = [
    "decode_labels",
    "decode_labels_reference",
    "decode_rle",
    "decode_rle_reference",
    "encode_labels",
    "encode_labels_reference",
    "encode_mask",
]
