"""Writing files so that a reader never sees a half-written one."""
import contextlib
import os


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open a temporary file beside `path` for writing; on success it is flushed to disk and renamed
    over `path`, on any error it is removed and `path` is left as it was. Creates the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
