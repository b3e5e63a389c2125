"""User-facing errors: the CLI prints their message on one line and exits 2, without a traceback."""


class PneumoscanError(Exception):
    """A mistake in what the user gave us (path, layout, file), not a bug in pneumoscan."""


class LayoutError(PneumoscanError):
    """A folder is not in the NORMAL/PNEUMONIA layout pneumoscan expects."""


class ImageDecodeError(PneumoscanError):
    """A file could not be read as an image. `kind` says why in a word a service can map to a status:
    unsupported (not an accepted format), too_large (over a pixel limit), or unreadable."""

    def __init__(self, path: object, reason: str, kind: str = "unreadable") -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.kind = kind


class BundleError(PneumoscanError):
    """A model bundle is missing, incomplete or inconsistent."""


class InputWarning(UserWarning):
    """An input was read, but not all of it (e.g. only the first frame of a multi-frame DICOM object)."""
