"""The precisions a node may serve, by name (no torch here: the CLI and configs import it).

A node computes in a dtype (float32, float16, bfloat16) and may quantize its blocks' linear
weights (`node.quantize`: int8, nf4, computed in a 16-bit dtype). The pair is what it serves,
announces and commits: `bfloat16`, `bfloat16+int8`.
"""

from __future__ import annotations

QUANTIZATIONS = ("int8", "nf4")  # what `--quantize` accepts; None: full weights
QUANTIZATION_CODES = {"int8": 1, "nf4": 2}  # the byte a version-3 sketch commits
QUANTIZED_DTYPE_NAMES = ("bfloat16", "float16")  # quantized nodes compute in these


def precision_name(dtype: str, quantization: str | None) -> str:
    """What a node serves, as people read it: `bfloat16`, `bfloat16+int8`."""
    return dtype if quantization is None else f"{dtype}+{quantization}"


def split_precision(precision: str) -> tuple[str, str | None]:
    """`precision_name`'s parts back: `bfloat16+int8` -> ("bfloat16", "int8")."""
    dtype, _, quantization = precision.partition("+")
    return dtype, quantization or None
