"""The C allocator's handling of large blocks, which decides page-fault costs on CPU."""

import ctypes


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the system.

    Large tensors are otherwise mmap'ed and unmapped on every call, and the page faults
    of re-mapping them cost several times the arithmetic of a memory-bound op
    (``moebius bench --system-allocator`` measures the difference). The setting is
    process-wide, and the process keeps its peak memory until it exits. Returns whether
    the setting took (False off glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(
        libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, (1 << 31) - 1)
    )
