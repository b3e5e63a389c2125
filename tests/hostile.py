"""A corpus of hostile and unusual input files, generated on demand (nothing binary is committed).

Each Case writes one file (or a folder, FIFO or link) and says what every surface must make of it:
accepted (kind None: a (SIZE, SIZE) uint8 image, with a content check where the content matters) or
refused with ImageDecodeError of a kind (unsupported, too_large, unreadable) whose reason holds a given
phrase. tests/test_hostile_inputs.py drives the corpus through decode_grayscale, the decoded-image cache,
predict, the web service, evaluate, train and adapt.
"""

import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32  # the decode size every check is written for
BOMB_SIDE = 60_000  # a declared side far over MAX_PIXELS, with no pixel data behind it


@dataclass(frozen=True)
class Case:
    name: str  # the file's name in the corpus folder, and the test id
    write: Callable[[Path], None]
    kind: str | None = None  # None: accepted; else the ImageDecodeError kind
    reason: str = ""  # a phrase the refusal's reason contains
    check: Callable[[np.ndarray], bool] | None = None  # an accepted file's content, decoded at SIZE
    warns: bool = False  # an InputWarning is expected
    special: bool = False  # not a regular file (folder, FIFO, link): cannot be uploaded or copied
    needs_non_root: bool = False  # root reads any file, so a permission case cannot be made

    @property
    def accepted(self) -> bool:
        return self.kind is None


# --- content checks ------------------------------------------------------------------------------------------


def near(value: float, tolerance: float = 3) -> Callable[[np.ndarray], bool]:
    return lambda pixels: abs(float(pixels.mean()) - value) <= tolerance


def ramp_left_to_right(pixels: np.ndarray) -> bool:
    """Dark on the left, bright on the right, using the full range (a windowed ramp)."""
    return bool(pixels[:, :3].mean() < 25 and pixels[:, -3:].mean() > 230)


def ramp_right_to_left(pixels: np.ndarray) -> bool:
    return ramp_left_to_right(pixels[:, ::-1])


def quadrants(expected: tuple[float, float, float, float], tolerance: float = 12) -> Callable[[np.ndarray], bool]:
    """Mean of the centre of each quadrant (TL, TR, BL, BR)."""
    def check(pixels: np.ndarray) -> bool:
        h, q = SIZE // 2, SIZE // 8
        centres = [pixels[r + q : r + h - q, c + q : c + h - q].mean() for r in (0, h) for c in (0, h)]
        return all(abs(float(a) - b) <= tolerance for a, b in zip(centres, expected, strict=True))
    return check


# --- writers ---------------------------------------------------------------------------------------------------


def image(mode: str, size: tuple[int, int], value: object, fmt: str | None = None, **save: object
          ) -> Callable[[Path], None]:
    return lambda path: Image.new(mode, size, value).save(path, format=fmt, **save)  # type: ignore[arg-type]


def array(pixels: np.ndarray, mode: str | None = None, fmt: str | None = None, **save: object
          ) -> Callable[[Path], None]:
    return lambda path: Image.fromarray(pixels, mode=mode).save(path, format=fmt, **save)  # type: ignore[arg-type]


def raw(content: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(content)


def _encoded(writer: Callable[[Path], None], suffix: str) -> bytes:
    """The bytes `writer` writes (Pillow picks the format from the suffix when the writer names none)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"x{suffix}"
        writer(path)
        return path.read_bytes()


def cut(writer: Callable[[Path], None], suffix: str, keep: float | int) -> Callable[[Path], None]:
    """The file `writer` makes, cut to `keep` bytes (int) or that share of its bytes (float)."""
    def write(path: Path) -> None:
        content = _encoded(writer, suffix)
        path.write_bytes(content[: keep if isinstance(keep, int) else int(len(content) * keep)])
    return write


def _ramp(height: int = 48, width: int = 48, top: float = 255.0, dtype: type = np.uint8) -> np.ndarray:
    return np.tile(np.linspace(0, top, width), (height, 1)).astype(dtype)


def _quadrant_image() -> np.ndarray:
    """48 x 96: TL 250, TR 170, BL 90, BR 10, so every one of the 8 EXIF orientations gives another layout."""
    pixels = np.empty((48, 96), dtype=np.uint8)
    pixels[:24, :48], pixels[:24, 48:], pixels[24:, :48], pixels[24:, 48:] = 250, 170, 90, 10
    return pixels


# The stored quadrant values, as displayed after each EXIF orientation (TL, TR, BL, BR).
_ORIENTED = {1: (250, 170, 90, 10), 2: (170, 250, 10, 90), 3: (10, 90, 170, 250), 4: (90, 10, 250, 170),
             5: (250, 90, 170, 10), 6: (90, 250, 10, 170), 7: (10, 170, 90, 250), 8: (170, 10, 250, 90)}


def exif_rotated(orientation: int, fmt: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        picture = Image.fromarray(_quadrant_image())
        exif = picture.getexif()
        exif[0x0112] = orientation
        picture.save(path, format=fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    return write


def float_tiff(pixels: np.ndarray) -> Callable[[Path], None]:
    return array(pixels.astype(np.float32), fmt="TIFF")


def _with_non_finite() -> np.ndarray:
    """48 x 48: NaN, +inf and -inf bands of 12 rows above a 12-row ramp."""
    pixels = _ramp(48, 48, 1.0, np.float32)
    pixels[:12], pixels[12:24], pixels[24:36] = np.nan, np.inf, -np.inf
    return pixels


def non_finite_shown_black_and_white(pixels: np.ndarray) -> bool:
    """NaN rows black, +inf rows white, -inf rows black, and the finite ramp below still spans the range."""
    band = SIZE // 4  # each band of 12 of 48 rows; its edges blur into the next band when resized
    nan, pos, neg, ramp = (pixels[i * band + 1 : (i + 1) * band - 1] for i in range(4))
    return bool(nan.max() == 0 and pos.min() == 255 and neg.max() == 0 and ramp_left_to_right(ramp))


def windowed(pixels: np.ndarray) -> bool:
    """A VOI window of centre 1000, width 400 over a 0..4000 ramp: black below 800, white above 1200, a ramp between."""
    row = pixels[SIZE // 2]
    return bool(row[:6].max() <= 1 and row[-10:].min() >= 254 and ((row > 1) & (row < 254)).sum() >= 2)


def palette(transparency: bool) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        picture = Image.new("P", (20, 20), 1)
        picture.putpalette([0, 0, 0, 250, 250, 250] + [0] * 762)
        picture.save(path, **({"transparency": 0} if transparency else {}))
    return write


def frames(fmt: str, values: tuple[int, ...], mode: str = "L") -> Callable[[Path], None]:
    """A multi-frame file (TIFF pages, APNG, animated WebP or GIF): the first frame is the one read."""
    def write(path: Path) -> None:
        pictures = [Image.new(mode, (24, 24), v if mode == "L" else (v,) * len(mode)) for v in values]
        options: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
        pictures[0].save(path, format=fmt, save_all=True, append_images=pictures[1:], **options)
    return write


def cmyk_jpeg(value: tuple[int, int, int, int]) -> Callable[[Path], None]:
    return image("CMYK", (24, 24), value, "JPEG", quality=95)


def jpeg_with_broken_exif(path: Path) -> None:
    content = _encoded(image("L", (24, 24), 140, "JPEG", quality=95), ".jpeg")
    junk = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + b"\x01" * 20  # an IFD that claims 65535 entries
    path.write_bytes(content[:2] + b"\xff\xe1" + struct.pack(">H", len(junk) + 2) + junk + content[2:])


# --- headers that declare huge images without their pixels ----------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(path: Path) -> None:
    header = struct.pack(">IIBBBBB", BOMB_SIDE, BOMB_SIDE, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _png_chunk(b"IEND", b""))


def png_bad_crc(path: Path) -> None:
    content = bytearray(_encoded(image("L", (24, 24), 99), ".png"))
    content[29] ^= 0xFF  # a byte of IHDR's CRC
    path.write_bytes(bytes(content))


def jpeg_bomb(path: Path) -> None:
    """A real 16x16 JPEG whose frame header (SOF0) is edited to declare 60000 x 60000."""
    content = bytearray(_encoded(image("L", (16, 16), 128, "JPEG"), ".jpeg"))
    at = content.index(b"\xff\xc0")
    content[at + 5 : at + 9] = struct.pack(">HH", BOMB_SIDE, BOMB_SIDE)
    path.write_bytes(bytes(content))


def tiff_bomb(path: Path) -> None:
    """A little-endian TIFF whose one IFD declares 60000 x 60000 8-bit pixels in one 1-byte strip."""
    tags = [(256, 4, 1, BOMB_SIDE), (257, 4, 1, BOMB_SIDE), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 1), (278, 4, 1, BOMB_SIDE), (279, 4, 1, 1)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags) + struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00")


def bmp_bomb(path: Path) -> None:
    info = struct.pack("<IiiHHIIiiII", 40, BOMB_SIDE, BOMB_SIDE, 1, 8, 0, 0, 2835, 2835, 0, 0)
    palette_bytes = bytes(range(256)) * 4
    path.write_bytes(b"BM" + struct.pack("<IHHI", 14 + 40 + 1024 + 16, 0, 0, 14 + 40 + 1024) + info + palette_bytes
                     + b"\0" * 16)


def webp_bomb(path: Path) -> None:
    """An extended (VP8X) WebP header whose canvas is 16384 x 16384 (268 M pixels), with no image data."""
    side = 16384 - 1
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + side.to_bytes(3, "little") * 2
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x)


def over_limit_png(path: Path) -> None:
    """A real (all-black, so tiny) PNG of 8000 x 7600 = 60.8 M pixels: just over MAX_PIXELS."""
    Image.new("L", (8000, 7600)).save(path, compress_level=9)


# --- DICOM (pydicom writes small ones in memory) -----------------------------------------------------------------


def dicom(pixels: np.ndarray | None = None, *, photometric: str = "MONOCHROME2", slope: float = 1.0,
          intercept: float = 0.0, window: tuple[float, float] | None = None, frames_: int = 1,
          transfer_syntax: str | None = None, truncate: bool = False, declared: tuple[int, int] | None = None,
          float_pixels: bool = False, rgb: bool = False) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
        meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
        dataset = Dataset()
        dataset.file_meta = meta
        dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        dataset.PatientName, dataset.PatientID, dataset.Modality = "Doe^Jane", "ID-1", "CR"
        stored = _ramp(64, 64, 4000, np.uint16) if pixels is None else pixels
        dataset.Rows, dataset.Columns = declared or stored.shape[:2]
        dataset.PhotometricInterpretation = "RGB" if rgb else photometric
        dataset.SamplesPerPixel = 3 if rgb else 1
        if rgb:
            dataset.PlanarConfiguration = 0
        if float_pixels:
            dataset.BitsAllocated = 32
            dataset.FloatPixelData = stored.astype(np.float32).tobytes()
        else:
            bits, stored_bits = (8, 8) if rgb else (16, 12)
            dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = bits, stored_bits, stored_bits - 1
            dataset.PixelRepresentation = 0
            if not rgb:
                dataset.RescaleSlope, dataset.RescaleIntercept = slope, intercept
            if window is not None:
                dataset.WindowCenter, dataset.WindowWidth = window
            if frames_ > 1:
                dataset.NumberOfFrames = frames_
            stack = np.stack([stored] + [stored[:, ::-1]] * (frames_ - 1)) if frames_ > 1 else stored
            data = stack.astype(np.uint8 if rgb else np.uint16).tobytes()
            dataset.PixelData = data[: len(data) // 3] if truncate else data
            if meta.TransferSyntaxUID.is_transfer_syntax and meta.TransferSyntaxUID.is_compressed:  # not a codestream
                from pydicom.encaps import encapsulate

                dataset.PixelData = encapsulate([data[:64]])
        private = not meta.TransferSyntaxUID.is_transfer_syntax  # an unknown syntax: the encoding must be named
        dataset.save_as(path, enforce_file_format=True, **({"implicit_vr": False, "little_endian": True}
                                                           if private else {}))
    return write


def dicom_without_pixels(path: Path) -> None:
    dicom()(path)
    from pydicom import dcmread

    dataset = dcmread(path)
    del dataset.PixelData
    dataset.save_as(path)


# --- special files -----------------------------------------------------------------------------------------------


def folder(path: Path) -> None:
    path.mkdir()
    Image.new("L", (8, 8), 50).save(path / "inside.png")  # a folder named like an image, with an image inside


def fifo(path: Path) -> None:
    os.mkfifo(path)


def dangling_link(path: Path) -> None:
    path.symlink_to(path.parent / "nowhere" / "gone.png")


def link_loop(path: Path) -> None:
    path.symlink_to(path.name)


def device_link(path: Path) -> None:
    path.symlink_to("/dev/null")


def unreadable(path: Path) -> None:
    Image.new("L", (8, 8), 50).save(path, format="PNG")
    path.chmod(0)


# --- the corpus --------------------------------------------------------------------------------------------------

_RNG = np.random.default_rng(11)
_JPEG_L = image("L", (48, 48), 140, "JPEG", quality=95)
_PNG_L = image("L", (48, 48), 140, "PNG")

CASES: tuple[Case, ...] = (
    # accepted: sizes and aspect ratios
    Case("one_pixel.png", image("L", (1, 1), 77), check=near(77, 0)),
    Case("wide_10000x50.png", array(_ramp(50, 10000)), check=ramp_left_to_right),
    Case("tall_50x10000.png", array(_ramp(10000, 50)), check=ramp_left_to_right),
    Case("just_under_limit_bilevel.png", image("1", (7700, 7700), 1), check=near(255, 0)),
    # accepted: pixel modes
    Case("gray16.png", array(_ramp(48, 64, 4000, np.uint16)), check=ramp_left_to_right),
    Case("gray16_bigendian.tiff", array(_ramp(48, 64, 60000, np.uint16).astype(">u2")), check=ramp_left_to_right),
    Case("int32_negative.tiff", array(_ramp(48, 64, 1e6, np.int32) - 500_000), check=ramp_left_to_right),
    Case("float_ramp.tiff", float_tiff(_ramp(48, 64, 1.0, np.float32) * 1e-6), check=ramp_left_to_right),
    Case("float_flat.tiff", float_tiff(np.full((24, 24), 3.5)), check=near(0, 0)),
    Case("float_nan_inf.tiff", float_tiff(_with_non_finite()), check=non_finite_shown_black_and_white, warns=True),
    Case("palette.png", palette(False), check=near(250)),
    Case("palette_transparency.png", palette(True), check=near(250)),
    Case("bilevel.png", array(np.indices((48, 48))[1] >= 24), check=lambda p: p[:, :12].max() == 0
         and p[:, -12:].min() == 255),
    Case("rgb.png", image("RGB", (40, 30), (200, 200, 200)), check=near(200, 1)),
    Case("rgba.png", image("RGBA", (40, 30), (200, 200, 200, 128)), check=near(200, 1)),
    Case("la.png", image("LA", (40, 30), (180, 60)), check=near(180, 1)),
    Case("cmyk_white.jpeg", cmyk_jpeg((0, 0, 0, 0)), check=lambda p: p.mean() > 240),
    Case("cmyk_black.jpeg", cmyk_jpeg((0, 0, 0, 255)), check=lambda p: p.mean() < 15),
    Case("gray.jpeg", _JPEG_L, check=near(140)),
    Case("progressive.jpeg", image("RGB", (48, 48), (90, 90, 90), "JPEG", progressive=True, quality=95),
         check=near(90)),
    Case("broken_exif.jpeg", jpeg_with_broken_exif, check=near(140)),
    *(Case(f"exif_orientation_{o}.jpeg", exif_rotated(o, "JPEG"), check=quadrants(_ORIENTED[o]))
      for o in range(1, 9)),
    Case("exif_orientation_6.png", exif_rotated(6, "PNG"), check=quadrants(_ORIENTED[6], 1)),
    # accepted: other containers
    Case("gray.bmp", image("L", (30, 20), 60, "BMP"), check=near(60, 0)),
    Case("rgb.bmp", image("RGB", (30, 20), (60, 60, 60), "BMP"), check=near(60, 0)),
    Case("lzw.tiff", image("L", (30, 20), 61, "TIFF", compression="tiff_lzw"), check=near(61, 0)),
    Case("deflate.tiff", image("RGB", (30, 20), (62, 62, 62), "TIFF", compression="tiff_adobe_deflate"),
         check=near(62, 0)),
    Case("lossless.webp", image("L", (30, 20), 63, "WEBP", lossless=True), check=near(63, 1)),
    Case("lossy.webp", image("RGB", (30, 20), (64, 64, 64), "WEBP", quality=90), check=near(64, 3)),
    Case("pages.tiff", frames("TIFF", (200, 20)), check=near(200, 0)),
    Case("animated.png", frames("PNG", (201, 21)), check=near(201, 0)),
    Case("animated.webp", frames("WEBP", (202, 22), "RGB"), check=near(202, 2)),
    Case("jpeg_named.png", _JPEG_L, check=near(140)),
    Case("png_named.jpeg", _PNG_L, check=near(140, 0)),
    Case("png_named.dcm", _PNG_L, check=near(140, 0)),
    Case("no_suffix", _PNG_L, check=near(140, 0)),
    # accepted: DICOM as a viewer shows it
    Case("monochrome2.dcm", dicom(), check=ramp_left_to_right),
    Case("monochrome1.dcm", dicom(photometric="MONOCHROME1"), check=ramp_right_to_left),
    Case("voi_window.dcm", dicom(window=(1000.0, 400.0)), check=windowed),
    Case("negative_slope.dcm", dicom(slope=-1.0, intercept=4000.0), check=ramp_right_to_left),
    Case("multi_frame.dcm", dicom(frames_=3), check=ramp_left_to_right, warns=True),
    Case("rgb.dcm", dicom(np.repeat(_ramp(16, 16)[..., None], 3, axis=2), rgb=True), check=ramp_left_to_right),
    Case("float_pixels.dcm", dicom(_ramp(32, 32, 1.0, np.float32), float_pixels=True), check=ramp_left_to_right),
    Case("float_nan.dcm", dicom(_with_non_finite(), float_pixels=True), check=non_finite_shown_black_and_white,
         warns=True),
    Case("dicom_named.png", dicom(), check=ramp_left_to_right),
    # refused: not an accepted format
    *(Case(f"random.{suffix}", raw(_RNG.bytes(2048)), "unsupported", "not an image")
      for suffix in ("png", "jpeg", "jpg", "tiff", "bmp", "webp")),
    Case("text.png", raw(b"just some text, not a picture\n" * 10), "unsupported", "not an image"),
    Case("html.jpeg", raw(b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"), "unsupported",
         "not an image"),
    Case("zip.png", raw(b"PK\x03\x04" + _RNG.bytes(200)), "unsupported", "not an image"),
    Case("svg.png", raw(b'<svg xmlns="http://www.w3.org/2000/svg" width="60000" height="60000"/>'), "unsupported",
         "not an image"),
    Case("static.gif", image("L", (20, 20), 100, "GIF"), "unsupported", "unsupported image format GIF"),
    Case("gif_named.png", image("L", (20, 20), 100, "GIF"), "unsupported", "unsupported image format GIF"),
    Case("animated.gif", frames("GIF", (100, 50, 20)), "unsupported", "unsupported image format GIF"),
    Case("eps_named.png", raw(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 60000 60000\n"
                              b"(pwned) print quit\n"), "unsupported", "unsupported image format PostScript/EPS"),
    Case("binary_eps_named.jpeg", raw(b"\xc5\xd0\xd3\xc6" + b"\x00" * 28), "unsupported",
         "unsupported image format EPS"),
    Case("pdf_named.jpeg", raw(b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"), "unsupported",
         "unsupported image format PDF"),
    Case("jpeg2000_named.png", raw(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + _RNG.bytes(64)), "unsupported",
         "unsupported image format JPEG 2000"),
    Case("psd_named.png", raw(b"8BPS\x00\x01" + b"\x00" * 40), "unsupported", "unsupported image format PSD"),
    Case("ico_named.png", image("L", (16, 16), 100, "ICO"), "unsupported", "unsupported image format ICO"),
    Case("tga_named.png", image("L", (16, 16), 100, "TGA"), "unsupported", "not an image"),
    Case("ppm_named.png", image("L", (16, 16), 100, "PPM"), "unsupported", "not an image"),
    # refused: a declared size over the pixel limit (decompression bombs), refused before any pixel is decoded
    Case("bomb.png", png_bomb, "too_large", "decompression-bomb guard"),
    Case("bomb.jpeg", jpeg_bomb, "too_large", "decompression-bomb guard"),
    Case("bomb.tiff", tiff_bomb, "too_large", "decompression-bomb guard"),
    Case("bomb.bmp", bmp_bomb, "too_large", "decompression-bomb guard"),
    Case("bomb.webp", webp_bomb, "too_large", "decompression-bomb guard"),
    Case("bomb.dcm", dicom(_ramp(4, 4, 100, np.uint16), declared=(BOMB_SIDE, BOMB_SIDE)), "too_large",
         "DICOM image declares 60000x60000 pixels"),
    Case("over_limit_8000x7600.png", over_limit_png, "too_large", "declares 8000x7600 pixels, more than the limit"),
    # refused: broken files
    *(Case(f"empty.{suffix}", raw(b""), "unreadable", "empty file") for suffix in ("png", "jpeg", "dcm")),
    Case("truncated_header.jpeg", cut(_JPEG_L, ".jpeg", 20), "unreadable", "starts like a JPEG file"),
    Case("truncated_half.jpeg", cut(image("RGB", (200, 200), (9, 99, 199), "JPEG"), ".jpeg", 0.5), "unreadable",
         "corrupt or truncated"),
    Case("truncated_signature.png", cut(_PNG_L, ".png", 8), "unreadable", "starts like a PNG file"),
    Case("truncated_half.png", cut(array(_RNG.integers(0, 255, (64, 64), dtype=np.uint8)), ".png", 0.5),
         "unreadable", "corrupt or truncated"),
    Case("bad_crc.png", png_bad_crc, "unreadable", "starts like a PNG file"),
    Case("truncated.tiff", cut(array(_RNG.integers(0, 255, (64, 64), dtype=np.uint8), fmt="TIFF"), ".tiff", 0.5),
         "unreadable", "corrupt or truncated"),
    Case("truncated.bmp", cut(array(_RNG.integers(0, 255, (64, 64), dtype=np.uint8), fmt="BMP"), ".bmp", 0.5),
         "unreadable", "corrupt or truncated"),
    Case("truncated.webp", cut(array(_RNG.integers(0, 255, (64, 64), dtype=np.uint8), fmt="WEBP"), ".webp", 0.5),
         "unreadable", "corrupt or truncated"),
    Case("float_all_nan.tiff", float_tiff(np.full((16, 16), np.nan)), "unreadable", "no pixel holds a finite value"),
    Case("random.dcm", raw(_RNG.bytes(4096)), "unreadable", "DICOM"),
    Case("dicom_no_pixels.dcm", dicom_without_pixels, "unreadable", "DICOM file without pixel data"),
    Case("dicom_jpeg2000_syntax.dcm", dicom(transfer_syntax="1.2.840.10008.1.2.4.90"), "unreadable",
         "DICOM pixel data cannot be decoded (transfer syntax JPEG 2000"),
    Case("dicom_unknown_syntax.dcm", dicom(transfer_syntax="1.2.3.4.5.6.7"), "unreadable",
         "DICOM pixel data cannot be decoded"),
    Case("dicom_truncated_pixels.dcm", dicom(truncate=True), "unreadable", "DICOM pixel data cannot be decoded"),
    Case("dicom_all_nan.dcm", dicom(np.full((8, 8), np.nan), float_pixels=True), "unreadable",
         "no pixel holds a finite value"),
    # refused: not a regular file, or not ours to read
    Case("folder.png", folder, "unreadable", "is a folder", special=True),
    Case("fifo.png", fifo, "unreadable", "not a regular file (FIFO)", special=True),
    Case("dangling_link.png", dangling_link, "unreadable", "broken link (points to", special=True),
    Case("link_loop.png", link_loop, "unreadable", "broken link (a loop of symbolic links)", special=True),
    Case("link_to_device.png", device_link, "unreadable", "not a regular file (character device)", special=True),
    Case("no_permission.png", unreadable, "unreadable", "permission denied", special=True, needs_non_root=True),
)
BY_NAME = {case.name: case for case in CASES}
assert len(BY_NAME) == len(CASES), "case names must be unique"
REGULAR = tuple(case for case in CASES if not case.special)


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def write_corpus(folder: Path, cases: tuple[Case, ...] = CASES) -> dict[str, Path]:
    """Write the cases into `folder` (made if missing); returns name -> path. Permission cases are left out as root."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for case in cases:
        if case.needs_non_root and is_root():
            continue
        path = folder / case.name
        case.write(path)
        written[case.name] = path
    return written
