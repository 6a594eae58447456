"""Which student block is distilled from which teacher block (coarse feature KD).

Indices refer to ``ModelOutput.block_outputs``. The paper pairs the student's
deepest down level (1280×16×16 at 512 px) with PixelHacker's first up level with
cross-attention (also 1280×16×16).
"""

COARSE_KD_BLOCKS: dict[tuple[str, str], tuple[int, int]] = {
    ("moebius", "pixelhacker"): (2, 5),
    ("moebius", "moebius"): (2, 2),
}


def coarse_kd_blocks(student_type: str, teacher_type: str) -> tuple[int, int]:
    """(student block index, teacher block index) for a pair of ``model_type`` names."""
    try:
        return COARSE_KD_BLOCKS[(student_type, teacher_type)]
    except KeyError:
        raise KeyError(
            f"no coarse-KD pairing for student {student_type!r} and teacher "
            f"{teacher_type!r}; pass the block indices explicitly"
        ) from None
