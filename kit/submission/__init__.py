"""RLE and the submission CSV: encode/decode masks, write, read and validate ``ImageId,EncodedPixels`` files.

Conventions (1-based, column-major pixel numbering; strict RLE strings) are in `kit.submission.rle`;
the file format and row numbering are in `kit.submission.csvfile`. The plain numpy references of the
fast encoder and decoder (test oracles, benchmarks) stay in `kit.submission.rle` and are not exported.
"""

from kit.submission.csvfile import (
    HEADER,
    OPTIONAL_COLUMNS,
    SubmissionProblem,
    check_submission,
    read_rle_csv,
    read_submission_labels,
    validate_submission,
    write_submission,
)
from kit.submission.rle import (
    decode_labels,
    decode_rle,
    encode_labels,
    encode_mask,
)

__all__ = [
    "HEADER",
    "OPTIONAL_COLUMNS",
    "SubmissionProblem",
    "check_submission",
    "decode_labels",
    "decode_rle",
    "encode_labels",
    "encode_mask",
    "read_rle_csv",
    "read_submission_labels",
    "validate_submission",
    "write_submission",
]
