"""I/O faults for tests: ``install("ENOSPC", where)`` makes every file opened for writing whose path contains
``where`` fail with that errno, as the disk or the folder would.

``ENOSPC`` fails the first write (the file is created, as on a full disk); any other code (``EROFS``,
``EACCES``) fails the open and the making of directories under such a path. In a subprocess the
installed ``tscl`` gets it from ``sitecustomize.py`` beside this file with ``TSCL_FAULT=CODE:WHERE``
and this folder on ``PYTHONPATH``; in the test process, call :func:`install` and :func:`uninstall`.
"""
import builtins
import errno
import io
import os

_REAL = {"open": builtins.open, "os.open": os.open, "mkdir": os.mkdir}


class _FullDisk:
    """A file whose writes fail as on a full disk (everything else is the real file's)."""

    def __init__(self, f, path, err):
        self._f, self._path, self._err = f, path, err

    def write(self, data):
        raise OSError(self._err, os.strerror(self._err), os.fsdecode(self._path))

    writelines = write

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        return False

    def __iter__(self):
        return iter(self._f)

    def __getattr__(self, name):
        return getattr(self._f, name)


def install(code: str, where: str) -> None:
    err = getattr(errno, code)

    def hit(path) -> bool:
        try:
            return where in os.path.abspath(os.fsdecode(path))
        except TypeError:  # a file descriptor
            return False

    def fail(path):
        raise OSError(err, os.strerror(err), os.fsdecode(path))

    def fake_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and hit(file):
            if err != errno.ENOSPC:
                fail(file)
            return _FullDisk(_REAL["open"](file, mode, *args, **kwargs), file, err)
        return _REAL["open"](file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and hit(path) and err != errno.ENOSPC:
            fail(path)
        return _REAL["os.open"](path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if hit(path) and err != errno.ENOSPC:
            fail(path)
        return _REAL["mkdir"](path, *args, **kwargs)

    builtins.open = io.open = fake_open
    os.open, os.mkdir = fake_os_open, fake_mkdir


def uninstall() -> None:
    builtins.open = io.open = _REAL["open"]
    os.open, os.mkdir = _REAL["os.open"], _REAL["mkdir"]
