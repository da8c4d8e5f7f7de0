"""Rendering collection items to square PNGs, with an on-disk cache and optional worker processes.

OpenClipart drawings are SVG and Noto emoji are glyphs of a colour font: neither is an image file that the data
and eval layers can read. `render_job` turns one `RenderJob` (an SVG file or an emoji, and a pixel size) into a
size x size RGB PNG: the drawing fitted inside the square, its aspect ratio kept, centred on white (transparent
backgrounds would otherwise turn black or grey depending on who flattens them). Rendering is slow (~0.1 s per
SVG), so `RenderCache` keeps every result on disk, keyed by the source (its path, byte size and modification
time; for an emoji, the character and the font file) and the size: a second pass, another epoch or a new export
reads PNGs instead of rendering. Failures are cached too (a `.fail` file holding the reason), so a drawing
cairosvg cannot render is tried once, then skipped and counted cheaply. `render_many` runs jobs in worker
processes when asked.

SVGs are rendered with cairosvg's defaults, which refuse XML entity declarations and fetch no external
resources (only data: URLs), so a hostile SVG cannot read local files or reach the network.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from PIL import Image

from clipforge.atomic import atomic_write_bytes
from clipforge.safeio import read_regular_file

RENDER_VERSION = 1  # bump when the rendering changes, so cached PNGs are not reused
MAX_SVG_BYTES = 32 * 2**20  # 32 MiB: the largest OpenClipart file is ~5 MiB
MIN_SIZE, MAX_SIZE = 16, 4096
EMOJI_FONT_SIZE = 109  # Noto Color Emoji is a bitmap font with a single 109 px strike
EMOJI_MARGIN = 0.1  # share of the square left blank around an emoji on each side


class RenderError(Exception):
    """One item could not be rendered; the message says why. Counted and skipped by every caller."""


@dataclass(frozen=True)
class RenderJob:
    """One item to render.

    Fields:
        kind: "svg" (source is an SVG file) or "emoji" (source is the emoji's characters).
        source: the SVG path, or the emoji.
        size: the side of the square PNG in pixels.
        font: emoji: the colour font file (Noto Color Emoji).
    """

    kind: str
    source: str
    size: int
    font: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("svg", "emoji"):
            raise ValueError(f"render kind must be 'svg' or 'emoji', got {self.kind!r}")
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ValueError(f"render size must be in {MIN_SIZE}..{MAX_SIZE} pixels, got {self.size}")
        if self.kind == "emoji" and not self.font:
            raise ValueError("an emoji render job needs the font file")

    @property
    def label(self) -> str:
        """What messages call the item: the SVG path, or the emoji and its code points."""
        if self.kind == "svg":
            return self.source
        return f"emoji {self.source} ({' '.join(f'U+{ord(c):04X}' for c in self.source)})"


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/clipforge/render (~/.cache/clipforge/render when XDG_CACHE_HOME is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clipforge" / "render"


def _fit_on_white(image: Image.Image, size: int, margin: float = 0.0) -> Image.Image:
    """`image` (any mode) scaled to fit inside size x size less the margin, centred on a white RGB square."""
    rgba = image.convert("RGBA")
    inner = max(1, round(size * (1 - 2 * margin)))
    scale = inner / max(rgba.size)
    if abs(scale - 1) > 1e-6:
        new = (max(1, round(rgba.width * scale)), max(1, round(rgba.height * scale)))
        rgba = rgba.resize(new, Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(rgba, ((size - rgba.width) // 2, (size - rgba.height) // 2))
    return canvas.convert("RGB")


def render_svg(path: str, size: int) -> Image.Image:
    """An SVG file as a size x size RGB image (aspect kept, centred on white); RenderError when it cannot be."""
    try:
        import cairosvg
    except ImportError as exc:  # an install problem, not a bad drawing: stop with what to do, never count it
        raise ImportError(
            "rendering SVG drawings needs cairosvg: pip install 'clipforge[collections]' "
            "(and the system's Cairo library, e.g. apt-get install libcairo2)"
        ) from exc

    try:
        data = read_regular_file(path, MAX_SVG_BYTES, what="SVG file")
    except OSError as exc:
        raise RenderError(f"cannot read: {exc}") from exc
    try:  # render the longer side at `size`: a first pass at the width tells the aspect ratio
        png = cairosvg.svg2png(bytestring=data, output_width=size)
        image = Image.open(io.BytesIO(png))
        if image.height > size:
            image = Image.open(io.BytesIO(cairosvg.svg2png(bytestring=data, output_height=size)))
        image.load()
    except Exception as exc:  # cairosvg raises anything from XML, CSS, cairo and its own parser
        raise RenderError(f"cairosvg failed: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if image.width < 1 or image.height < 1:
        raise RenderError("the drawing has no area")
    rgb = _fit_on_white(image, size)
    if rgb.getextrema() == ((255, 255), (255, 255), (255, 255)):
        raise RenderError("renders as a blank white image")
    return rgb


def render_emoji(emoji: str, size: int, font_path: str) -> Image.Image:
    """One emoji drawn with a colour font as a size x size RGB image on white; RenderError when it cannot be.

    The font is drawn at its bitmap size (109 px for Noto Color Emoji) on a transparent canvas, cropped to the
    drawn pixels and scaled into the square. A sequence the font cannot draw as one glyph (an emoji newer than
    the font: it comes out as several glyphs or a blank box) is refused.
    """
    from PIL import ImageDraw, ImageFont

    try:
        font = ImageFont.truetype(font_path, EMOJI_FONT_SIZE)
    except OSError as exc:
        raise RenderError(f"cannot load the emoji font {font_path}: {exc}") from exc
    width = font.getlength(emoji)
    if width > 1.6 * EMOJI_FONT_SIZE:  # one emoji glyph is ~1.2 em wide at this size; two or more are not one
        raise RenderError(f"the font draws it as several glyphs ({width:.0f} px wide): newer than the font")
    side = 2 * EMOJI_FONT_SIZE
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((side // 4, side // 4), emoji, font=font, embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    if box is None:
        raise RenderError("the font draws nothing for it")
    return _fit_on_white(canvas.crop(box), size, EMOJI_MARGIN)


def render_job(job: RenderJob) -> Image.Image:
    """The image of `job` (not cached); RenderError when it cannot be rendered."""
    if job.kind == "svg":
        return render_svg(job.source, job.size)
    return render_emoji(job.source, job.size, job.font or "")


def _stat_key(path: str) -> list:
    try:
        stat = os.stat(path)
    except OSError:
        return [os.path.abspath(path), None, None]
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


class RenderCache:
    """PNG renders on disk under `root`, keyed by the source file (path, size, mtime) and the pixel size.

    `path(job)` renders on a miss and returns the PNG's path; it raises RenderError for an item that cannot be
    rendered (now or on an earlier pass: the reason is kept in a .fail file beside where the PNG would be).
    Files are written atomically, so concurrent workers and interrupted runs never leave a partial PNG.
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def key(self, job: RenderJob) -> str:
        """The cache key of `job`: a hash of what it renders from and its size."""
        if job.kind == "svg":
            parts = ["svg", *_stat_key(job.source), job.size, RENDER_VERSION]
        else:
            parts = ["emoji", job.source, *_stat_key(job.font or ""), job.size, RENDER_VERSION]
        return hashlib.sha256(json.dumps(parts).encode("utf-8", "surrogateescape")).hexdigest()[:32]

    def _files(self, job: RenderJob) -> tuple[Path, Path]:
        key = self.key(job)
        folder = self.root / key[:2]
        return folder / f"{key}.png", folder / f"{key}.fail"

    def cached(self, job: RenderJob) -> bool:
        """Whether `job` has a cached result (a PNG or a recorded failure)."""
        png, fail = self._files(job)
        return png.is_file() or fail.is_file()

    def path(self, job: RenderJob) -> str:
        """The cached PNG of `job`, rendered first on a miss; RenderError when it cannot be rendered."""
        png, fail = self._files(job)
        if png.is_file():
            return str(png)
        if fail.is_file():
            raise RenderError(fail.read_text(encoding="utf-8", errors="replace").strip() or "failed earlier")
        png.parent.mkdir(parents=True, exist_ok=True)
        try:
            image = render_job(job)
        except RenderError as exc:
            atomic_write_bytes(fail, str(exc).encode("utf-8"))
            raise
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=False)
        atomic_write_bytes(png, buffer.getvalue())
        return str(png)


@dataclass(frozen=True)
class RenderResult:
    """The outcome of one job: the PNG path, or None and the reason it failed."""

    index: int
    png: str | None
    error: str | None = None


def _render_one(args: tuple[int, RenderJob, str]) -> RenderResult:
    index, job, root = args
    try:
        return RenderResult(index, RenderCache(root).path(job))
    except RenderError as exc:
        return RenderResult(index, None, str(exc))


def render_many(
    jobs: Sequence[RenderJob],
    cache: RenderCache,
    workers: int = 0,
    on_result: Callable[[RenderResult], None] | None = None,
) -> list[RenderResult]:
    """Render (or read from the cache) every job; failures are returned, never raised.

    Args:
        workers: 0 renders in this process; N > 0 uses N worker processes (spawned, so a parent holding
            threads, such as torch's, is safe to use). Results come back in job order either way.
        on_result: called with each result as it arrives (e.g. to advance a progress bar).
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    tasks = [(i, job, str(cache.root)) for i, job in enumerate(jobs)]
    results: list[RenderResult] = []

    def collect(stream: Iterator[RenderResult]) -> None:
        for result in stream:
            results.append(result)
            if on_result is not None:
                on_result(result)

    if workers == 0 or len(tasks) < 2:
        collect(map(_render_one, tasks))
        return results
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        collect(pool.map(_render_one, tasks, chunksize=max(1, min(32, len(tasks) // (4 * workers)))))
    return results
