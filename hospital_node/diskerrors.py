"""What to tell the operator when a write to the node's disk fails (by the error's errno)."""

from __future__ import annotations

import errno

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def disk_hint(exc: OSError) -> str:
    """What to do about a failed write, by its errno."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full: free space on it (or give the state volume more)"
    if exc.errno == errno.EFBIG:
        return "a file-size limit was hit (ulimit -f): raise it for the node"
    if exc.errno == errno.EROFS:
        return "the file system is read-only: mount the state volume read-write"
    return "check the disk and its permissions"
