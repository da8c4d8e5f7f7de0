"""The fuzz corpus of bad inputs, generated in a temporary folder at test time (seeded; nothing binary committed).

Images (`write_images`): truncations of PNG/JPEG/WEBP/GIF at several offsets, zero-byte files, random bytes
under image extensions, decompression bombs of both kinds (a header announcing billions of pixels; real
1 x 100000 and 100000 x 1 aspect-ratio bombs that only blow up when resized), non-regular files (FIFOs named
.jpg, a directory named x.jpg, a symlink loop, /dev/zero linked as .png), an EPS document named .jpg (Pillow
would hand it to Ghostscript), and valid images that are merely odd: modes I;16, CMYK, LA, P with transparency,
1-bit and F, and hostile names (non-UTF-8 bytes, 250 characters, a newline, a leading dash).

Each `BadImage` says what must happen to it (`expect`):
- "refused": load_image raises an OSError (ImageLoadError, ELOOP, IsADirectoryError ...); commands skip it;
- "valid": a real image, however odd: load_image returns RGB and commands use it;
- "oversize": an aspect-ratio bomb: load_image may decode it (few pixels) but every command must skip it, with
  a reason, instead of resizing it into gigabytes.

CSVs (`write_csvs`) and captions (`write_caption_folder`) are the text side: malformed quoting, a BOM,
Latin-1 and UTF-16 files, wrong column counts, missing columns, empty and binary files; empty, 1 MB,
non-UTF-8 and NUL-carrying captions.
"""

from __future__ import annotations

import io
import os
import random
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

SEED = 8


@dataclass(frozen=True)
class BadImage:
    """One image input: `path` (str, or bytes for a non-UTF-8 name), its `kind` and what must happen to it."""

    name: str
    path: str | bytes
    kind: str
    expect: str  # "refused" | "valid" | "oversize"

    @property
    def arg(self) -> str:
        """The path as a command-line argument (bytes names as Python decodes argv: surrogateescape)."""
        return os.fsdecode(self.path)


def _picture(rng: random.Random, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A noisy RGB picture (noise defeats compression, so truncations land inside the pixel data)."""
    data = bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3))
    return Image.frombytes("RGB", size, data)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    """`image` encoded as `fmt` (PIL format name) in memory."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_bomb(width: int, height: int) -> bytes:
    """A PNG whose IHDR announces width x height RGB pixels, followed by a few bytes of (valid) zlib data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + _png_chunk(b"IEND", b"")
    )


def gif_header_bomb(width: int, height: int) -> bytes:
    """A GIF whose logical screen is width x height, with one tiny 1x1 frame."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame + b"\x3b"


def jpeg_header_bomb(width: int, height: int, rng: random.Random) -> bytes:
    """A real small JPEG whose SOF0 frame header is rewritten to announce width x height."""
    data = bytearray(encoded(_picture(rng, (16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 16 16
%%EndComments
newpath 0 0 moveto 16 16 lineto stroke
showpage
%%EOF
"""

TRUNCATION_FRACTIONS = (0.02, 0.1, 0.25, 0.5, 0.75)
TRUNCATION_BYTES = (1, 8, 24)


def write_images(root: Path) -> list[BadImage]:
    """Write the image corpus under `root` (created); return one BadImage per input, in a stable order."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    items: list[BadImage] = []

    def put(name: str, data: bytes, kind: str, expect: str) -> None:
        path = root / name
        path.write_bytes(data)
        items.append(BadImage(name, str(path), kind, expect))

    # ---- truncations: a few bytes in (inside the header) and at fractions of the file (inside the pixel data)
    picture = _picture(rng)
    formats = {
        "png": ("PNG", {}),
        "jpg": ("JPEG", {"quality": 95}),
        "webp": ("WEBP", {"quality": 90}),
        "gif": ("GIF", {}),
    }
    for ext, (fmt, options) in formats.items():
        full = encoded(picture, fmt, **options)
        cuts = sorted({*TRUNCATION_BYTES, *(int(len(full) * f) for f in TRUNCATION_FRACTIONS)})
        for cut in cuts:
            put(f"trunc-{ext}-{cut:05d}.{ext}", full[:cut], "truncated", "refused")
        put(f"zero-bytes.{ext}", b"", "zero-byte", "refused")
    # ---- random bytes under image names, and a text file named .png
    for ext in ("jpg", "png", "webp", "gif", "bmp", "tiff"):
        put(f"random.{ext}", bytes(rng.randrange(256) for _ in range(2048)), "random-bytes", "refused")
    put("text.png", b"hello, this is not a picture\n" * 10, "random-bytes", "refused")
    # ---- decompression bombs: headers announcing billions of pixels (the files are tiny)
    put("bomb-header-100000x100000.png", png_header_bomb(100_000, 100_000), "pixel-bomb", "refused")
    put("bomb-header-65535x65535.gif", gif_header_bomb(65_535, 65_535), "pixel-bomb", "refused")
    put("bomb-header-65000x65000.jpg", jpeg_header_bomb(65_000, 65_000, rng), "pixel-bomb", "refused")
    # ---- aspect-ratio bombs: few pixels, but a resize of the short side to the model's size asks for gigabytes
    for width, height in ((1, 100_000), (100_000, 1), (3, 200_000)):
        data = encoded(Image.new("RGB", (width, height), (90, 120, 200)), "PNG")
        put(f"aspect-{width}x{height}.png", data, "aspect-bomb", "oversize")
    # ---- not a regular file, or not reachable
    for name in ("fifo.jpg", "fifo.png"):
        os.mkfifo(root / name)
        items.append(BadImage(name, str(root / name), "fifo", "refused"))
    (root / "directory.jpg").mkdir()
    items.append(BadImage("directory.jpg", str(root / "directory.jpg"), "directory", "refused"))
    os.symlink(root / "loop-b.jpg", root / "loop-a.jpg")
    os.symlink(root / "loop-a.jpg", root / "loop-b.jpg")
    items.append(BadImage("loop-a.jpg", str(root / "loop-a.jpg"), "symlink-loop", "refused"))
    os.symlink("/dev/zero", root / "dev-zero.png")
    items.append(BadImage("dev-zero.png", str(root / "dev-zero.png"), "device", "refused"))
    os.symlink(root / "nowhere.png", root / "dangling.png")
    items.append(BadImage("dangling.png", str(root / "dangling.png"), "dangling-symlink", "refused"))
    unreadable = root / "no-permission.png"
    unreadable.write_bytes(encoded(picture, "PNG"))
    unreadable.chmod(0)
    if os.access(unreadable, os.R_OK):  # root ignores permissions: the file is then simply valid
        items.append(BadImage(unreadable.name, str(unreadable), "unreadable", "valid"))
    else:
        items.append(BadImage(unreadable.name, str(unreadable), "unreadable", "refused"))
    # ---- formats that must not be reachable from an image name
    put("document.jpg", EPS, "eps", "refused")
    put("document.eps.png", EPS, "eps", "refused")
    # ---- valid but odd modes: each must come out RGB
    odd = {
        "mode-I16.png": Image.frombytes("I;16", (24, 20), bytes(rng.randrange(256) for _ in range(24 * 20 * 2))),
        "mode-CMYK.jpg": Image.new("CMYK", (24, 20), (10, 200, 30, 5)),
        "mode-LA.png": Image.new("LA", (24, 20), (128, 60)),
        "mode-1.png": picture.convert("1"),
        "mode-F.tiff": Image.new("F", (24, 20), 0.5),
        "mode-RGBA.webp": Image.new("RGBA", (24, 20), (1, 2, 3, 0)),
    }
    for name, image in odd.items():
        fmt = {"png": "PNG", "jpg": "JPEG", "tiff": "TIFF", "webp": "WEBP"}[name.rsplit(".", 1)[1]]
        put(name, encoded(image, fmt), "odd-mode", "valid")
    palette = picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    put("mode-P-transparency.png", encoded(palette, "PNG", transparency=0), "odd-mode", "valid")
    put("mode-P-transparency.gif", encoded(palette, "GIF", transparency=0), "odd-mode", "valid")
    frames = [_picture(rng, (20, 20)) for _ in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    put("animated.gif", buffer.getvalue(), "odd-mode", "valid")
    # ---- hostile names on valid files
    png = encoded(_picture(rng, (20, 20)), "PNG")
    raw = os.fsencode(root) + b"/caf\xe9-\xff\xfe.png"  # Latin-1 bytes: not UTF-8
    with open(raw, "wb") as handle:
        handle.write(png)
    items.append(BadImage("non-utf8-name", raw, "non-utf8-name", "valid"))
    put("x" * 246 + ".png", png, "long-name", "valid")
    put("new\nline.png", png, "newline-name", "valid")
    put("-dash.png", png, "dash-name", "valid")
    put("space and 'quote\".png", png, "quote-name", "valid")
    put("UPPER.PNG", png, "upper-suffix", "valid")
    return items


def is_fifo(path: str | bytes) -> bool:
    """Whether `path` is a named pipe (without following or opening it)."""
    try:
        return stat.S_ISFIFO(os.lstat(path).st_mode)
    except OSError:
        return False


# ---- CSVs: (name, bytes, the number of data rows, what must happen) ----------------------------------------


@dataclass(frozen=True)
class BadCsv:
    """A CSV file of (image, text) rows; `expect`: "ok", "refuse", "refuse_or_report" (naming `bad_line`) or
    "ok_or_refuse"."""

    name: str
    path: str
    rows: int
    expect: str
    bad_line: int | None = None  # the line a report must name when the command goes on


def write_csvs(root: Path, good: list[str], header: tuple[str, str], rng_seed: int = SEED) -> list[BadCsv]:
    """Write the CSV corpus under `root`, each listing the valid images in `good`; `header` names the image and
    text columns (("filepath", "title") for make-shards, ("path", "label") for eval)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(rng_seed)
    rows = [(path, f"a photo number {i}") for i, path in enumerate(good)]
    n = len(rows)

    def text(lines: list[str]) -> str:
        return "".join(line + "\n" for line in lines)

    def body(columns: str = ",".join(header)) -> list[str]:
        return [columns] + [f'"{p}","{c}"' for p, c in rows]

    cases: list[BadCsv] = []

    def put(name: str, data: bytes, count: int, expect: str, bad_line: int | None = None) -> None:
        (root / name).write_bytes(data)
        cases.append(BadCsv(name, str(root / name), count, expect, bad_line))

    unterminated = body()
    unterminated[2] = f'"{rows[1][0]}","an unterminated quote'  # line 3: the quote swallows every later line
    put("unterminated-quote.csv", text(unterminated).encode(), n, "refuse_or_report", bad_line=3)
    put("bom.csv", b"\xef\xbb\xbf" + text(body()).encode(), n, "ok")
    latin = body()
    latin[1] = f'"{rows[0][0]}","caf\xe9 cr\xe8me"'
    put("latin1.csv", text(latin).encode("latin-1"), n, "refuse_or_report", bad_line=2)
    put("utf16.csv", text(body()).encode("utf-16"), n, "ok_or_refuse")
    wrong = body()
    wrong[2] = f'"{rows[1][0]}","caption","extra","fields"'
    wrong[3] = f'"{rows[2][0]}"'
    put("wrong-column-count.csv", text(wrong).encode(), n, "refuse_or_report", bad_line=3)
    put("missing-columns.csv", text(body(header[0] + ",description")).encode(), n, "refuse")
    put("empty.csv", b"", 0, "refuse")
    put("header-only.csv", (",".join(header) + "\n").encode(), 0, "refuse")
    put("binary.csv", bytes(rng.randrange(256) for _ in range(4096)), 0, "refuse")
    put("nul-bytes.csv", text(body()).encode().replace(b"a photo number 0", b"a photo\0number 0"), n, "ok_or_refuse")
    return cases


def write_caption_folder(root: Path, rng_seed: int = SEED) -> dict[str, int]:
    """A make-shards/training folder: good image+caption pairs plus captions that are empty, 1 MB long,
    non-UTF-8, NUL-carrying or missing. Returns {"good": n, "must_skip": n, "either": n}: "either" captions
    may be kept (a tokenizer truncates them) or skipped, but every one must be counted one way or the other."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(rng_seed)

    def pair(name: str, caption: bytes | None) -> None:
        (root / f"{name}.png").write_bytes(encoded(_picture(rng, (20, 20)), "PNG"))
        if caption is not None:
            (root / f"{name}.txt").write_bytes(caption)

    for i in range(6):
        pair(f"good-{i}", f"a good caption {i}".encode())
    must_skip = {"empty": b"", "blank": b"  \n\t\n", "latin1": "caf\xe9".encode("latin-1"), "missing": None}
    for name, caption in must_skip.items():
        pair(f"caption-{name}", caption)
    either = {
        "one-megabyte": b"word " * 200_000,
        "nul-bytes": b"a cap\0tion with\0 NULs",
        "utf16": "hi".encode("utf-16"),
    }
    for name, caption in either.items():
        pair(f"caption-{name}", caption)
    return {"good": 6, "must_skip": len(must_skip), "either": len(either)}
