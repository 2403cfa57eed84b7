"""Contact sheet and HTML gallery for the thumbnails `blurvid process` saves.

    from pipeline.preview import find_videos, make_preview, thumb_name
    sheet, page = make_preview(Path("output/out_thumbs"), video=Path("output/out.mp4"), source=Path("in.mp4"))
    thumbs = Path("output/out_thumbs")
    sheet, page = make_preview(thumbs, **find_videos(thumbs))   # the videos `blurvid process` recorded

Thumbnails are named `thumb_name(index, seconds)`, e.g. `000025_1.000s.jpg`; `parse_thumb_name` reads
that back. `contact_sheet.png` (a grid, each tile labelled with frame number and time) and `index.html`
(captioned thumbnails, plus the source and output videos side by side when given) are written into
the thumbnail folder, so the page's links stay valid wherever the folder is moved with its videos.
`blurvid process` records where its input and output are in `videos.json` in the same folder
(`record_videos`), so `find_videos` can put both on the page. On `<body>`, `data-images-loaded` /
`data-images-failed` (and `data-videos-...`) count what the browser has shown or failed to load.
"""

import html
import json
import math
import os
import re
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np

from pipeline.errors import InputError, OutputError

SHEET_NAME = "contact_sheet.png"
PAGE_NAME = "index.html"
VIDEOS_NAME = "videos.json"  # {"video": "../out.mp4", "source": "../in.mp4"}, relative to the folder
THUMB_SUFFIXES = (".jpg", ".jpeg", ".png")

MAX_TILE_W = 320  # px; full-HD thumbnails would make a 4-column sheet 8000 px wide
GAP = 8  # px between tiles and around the sheet
LABEL_H = 24  # px strip under each tile; the label never covers the frame being judged
BG = (32, 32, 32)  # sheet background, BGR
STRIP = (0, 0, 0)
INK = (255, 255, 255)

_THUMB_RE = re.compile(r"(\d{6,})_(\d+\.\d{3})s\.(?:jpg|jpeg|png)", re.IGNORECASE)


def thumb_name(index: int, seconds: float) -> str:
    """`thumb_name(25, 1.0) == "000025_1.000s.jpg"`: the file name for frame `index` shown at `seconds`."""
    if index < 0 or seconds < 0:
        raise ValueError(f"thumbnail index and time must be >= 0, got {index}, {seconds}")
    return f"{index:06d}_{seconds:.3f}s.jpg"


def parse_thumb_name(name: str) -> tuple[int, float]:
    """`parse_thumb_name("000025_1.000s.jpg") == (25, 1.0)`; ValueError for any other name."""
    m = _THUMB_RE.fullmatch(Path(name).name)
    if m is None:
        raise ValueError(f"not a thumbnail name like {thumb_name(25, 1.0)!r}: {name!r}")
    return int(m[1]), float(m[2])


def format_time(seconds: float) -> str:
    """`format_time(61.5) == "1:01.500"`; hours appear only when needed."""
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h}:{m:02d}:{s:02d}.{ms:03d}" if h else f"{m}:{s:02d}.{ms:03d}"


def _caption(path: Path) -> tuple[str, float | None]:
    """Label for a thumbnail and its time in seconds (None for a file not named by `thumb_name`)."""
    try:
        index, seconds = parse_thumb_name(path.name)
    except ValueError:
        return path.stem, None  # a hand-added image still belongs on the sheet, under its own name
    return f"frame {index}  {format_time(seconds)}", seconds


def find_thumbs(thumb_dir: Path) -> list[Path]:
    """The thumbnails in `thumb_dir`, in frame order (others after, by name); InputError if none."""
    thumb_dir = Path(thumb_dir)
    if not thumb_dir.is_dir():
        raise InputError(f"{thumb_dir}: no such folder")
    paths = [
        p
        for p in thumb_dir.iterdir()
        # hidden files are our own temporaries (or the OS's), never thumbnails
        if p.is_file() and p.suffix.lower() in THUMB_SUFFIXES and p.name != SHEET_NAME and not p.name.startswith(".")
    ]
    if not paths:
        raise InputError(f"{thumb_dir}: no thumbnails found")

    def key(p: Path) -> tuple[int, int, str]:
        try:
            return 0, parse_thumb_name(p.name)[0], p.name
        except ValueError:
            return 1, 0, p.name

    return sorted(paths, key=key)


def _read_image(path: Path) -> np.ndarray:
    # imdecode of the bytes instead of imread: imread cannot open non-ASCII paths on Windows
    img = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"{path}: not an image OpenCV can read")
    return img  # (H, W, 3) BGR uint8


def _write_atomic(path: Path, data: bytes) -> None:
    # temp name + rename so an interrupted run never leaves half a file
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from e
    finally:
        tmp.unlink(missing_ok=True)  # also on Ctrl-C


def _tile_size(imgs: list[np.ndarray]) -> tuple[int, int]:
    """(w, h) of one tile: as wide as the widest thumbnail (at most MAX_TILE_W), tall enough for the tallest."""
    tile_w = min(max(img.shape[1] for img in imgs), MAX_TILE_W)
    tile_h = max(math.ceil(tile_w * img.shape[0] / img.shape[1]) for img in imgs)
    return tile_w, tile_h


def sheet_size(n: int, columns: int, tile: tuple[int, int]) -> tuple[int, int]:
    """(w, h) of a contact sheet of `n` tiles of size `tile` (w, h) in `columns` columns."""
    cols, rows = min(columns, n), math.ceil(n / columns)
    return cols * (tile[0] + GAP) + GAP, rows * (tile[1] + LABEL_H + GAP) + GAP


def _draw_label(strip: np.ndarray, text: str) -> None:
    """Write `text` into the (LABEL_H, w, 3) strip in place, shrinking it to fit the width."""
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, 1
    scale = 0.45
    (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
    room = strip.shape[1] - 8
    if tw > room:
        scale *= room / tw
        (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
    org = (4, (strip.shape[0] + th) // 2)
    cv2.putText(strip, text, org, font, scale, INK, thick, cv2.LINE_AA)


def render_sheet(paths: list[Path], *, columns: int = 4) -> np.ndarray:
    """The contact sheet for `paths` as a BGR uint8 image (see `sheet_size` for its size)."""
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    imgs = [_read_image(p) for p in paths]
    tile_w, tile_h = _tile_size(imgs)
    sheet_w, sheet_h = sheet_size(len(imgs), columns, (tile_w, tile_h))
    sheet = np.full((sheet_h, sheet_w, 3), BG, np.uint8)
    for i, (path, img) in enumerate(zip(paths, imgs)):
        row, col = divmod(i, columns)
        x0 = GAP + col * (tile_w + GAP)
        y0 = GAP + row * (tile_h + LABEL_H + GAP)
        # fit inside the tile keeping the aspect ratio, centred (letterboxed if sizes differ)
        s = min(tile_w / img.shape[1], tile_h / img.shape[0])
        w, h = max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))
        if (w, h) != (img.shape[1], img.shape[0]):
            interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
            img = cv2.resize(img, (w, h), interpolation=interp)
        x, y = x0 + (tile_w - w) // 2, y0 + (tile_h - h) // 2
        sheet[y : y + h, x : x + w] = img
        strip = sheet[y0 + tile_h : y0 + tile_h + LABEL_H, x0 : x0 + tile_w]
        strip[:] = STRIP
        _draw_label(strip, _caption(path)[0])
    return sheet


def _relpath(target: Path, base: Path) -> str | None:
    """`target` relative to folder `base` with '/' separators; None when there is no such path."""
    try:
        return Path(os.path.relpath(Path(target).resolve(), Path(base).resolve())).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return None


def _href(target: Path, base: Path) -> str:
    """URL of `target` relative to folder `base`, quoted (spaces, '#', '?') and ready for an attribute."""
    rel = _relpath(target, base)
    return html.escape(quote(rel) if rel is not None else Path(target).resolve().as_uri())


def record_videos(
    folder: Path, *, video: Path | None, source: Path | None, relative_to: Path | None = None
) -> Path:
    """Write `videos.json` into `folder`: where the output `video` and its `source` are, for `find_videos`.

    Paths are stored relative to `relative_to` (default `folder`; process writes into a temporary folder
    renamed later), so they stay valid when the thumbnails are moved together with the videos.
    """
    base = Path(relative_to or folder)
    links = {
        key: _relpath(p, base) or str(Path(p).resolve())
        for key, p in (("video", video), ("source", source))
        if p is not None
    }
    path = Path(folder) / VIDEOS_NAME
    _write_atomic(path, (json.dumps(links, indent=2) + "\n").encode("utf-8"))
    return path


def find_videos(thumb_dir: Path) -> dict[str, Path]:
    """The existing output and source videos for the gallery of `thumb_dir`: {"video": ..., "source": ...}.

    From `videos.json` when `blurvid process` wrote one; otherwise the output is guessed from the
    folder's name (out_thumbs/ → out.mp4 beside it). InputError when `videos.json` is not readable.
    """
    thumb_dir = Path(thumb_dir)
    record = thumb_dir / VIDEOS_NAME
    if record.is_file():
        try:
            links = json.loads(record.read_text(encoding="utf-8"))
            found = {key: thumb_dir / links[key] for key in ("video", "source") if links.get(key)}
        except (OSError, ValueError, TypeError, AttributeError) as e:
            msg = f"{record}: not a video record ({e}); delete it, or pass --video and --source"
            raise InputError(msg) from e
    else:
        found = {"video": thumb_dir.with_name(thumb_dir.name.removesuffix("_thumbs") + ".mp4")}
    return {key: p for key, p in found.items() if p.is_file()}


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #202020; color: #eee; margin: 1.5rem; }}
a {{ color: #9cf; }}
.videos {{ display: flex; gap: 1rem; flex-wrap: wrap; margin-bottom: 1.5rem; }}
.videos figure {{ flex: 1 1 320px; margin: 0; }}
.videos video {{ width: 100%; background: #000; }}
.thumbs {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 0.75rem; }}
.thumbs figure {{ margin: 0; }}
.thumbs img {{ width: 100%; display: block; }}
figcaption {{ font-size: 0.85rem; padding: 0.25rem 0; }}
</style>
</head>
<body data-images-total="{count}" data-videos-total="{video_count}">
<h1>{title}</h1>
{videos}<p>{count} thumbnails &middot; <a href="{sheet}">contact sheet</a></p>
<div class="thumbs">
{figures}
</div>
<script>
{script}</script>
</body>
</html>
"""

# Counts the thumbnails and videos that have loaded or failed into <body data-images-loaded,
# data-images-failed, data-videos-loaded, data-videos-failed>, so a headless browser can tell a working
# gallery from one with broken links (tests/test_preview_browser.py).
_LOAD_SCRIPT = """function count(elements, name, ready, ok, loadEvent) {
  let loaded = 0, failed = 0;
  const mark = () => Object.assign(document.body.dataset,
                                   {[name + "Loaded"]: loaded, [name + "Failed"]: failed});
  for (const el of elements) {
    let done = false;
    const settle = good => { if (!done) { done = true; good ? loaded++ : failed++; mark(); } };
    if (ready(el)) settle(ok(el));
    else {
      el.addEventListener(loadEvent, () => settle(true));
      el.addEventListener("error", () => settle(false));
    }
  }
  mark();
}
count(document.images, "images", img => img.complete, img => img.naturalWidth > 0, "load");
count(document.querySelectorAll("video"), "videos", v => v.readyState > 0 || v.error, v => !v.error,
      "loadedmetadata");
"""

# Playing, pausing or seeking one video does the same to the other, and clicking a thumbnail seeks
# both to its frame, so the blur can be compared with the source frame by frame.
_SYNC_SCRIPT = """const vids = Array.from(document.querySelectorAll("video"));
for (const v of vids) {
  v.addEventListener("play", () => vids.forEach(o => { if (o !== v && o.paused) { o.currentTime = v.currentTime; o.play(); } }));
  v.addEventListener("pause", () => vids.forEach(o => { if (o !== v && !o.paused) o.pause(); }));
  // the 50 ms tolerance ends the echo: the other video's own "seeked" finds them already together
  v.addEventListener("seeked", () => vids.forEach(o => {
    if (o !== v && Math.abs(o.currentTime - v.currentTime) > 0.05) o.currentTime = v.currentTime;
  }));
}
for (const a of document.querySelectorAll("a[data-t]")) {
  a.addEventListener("click", e => {
    e.preventDefault();
    vids.forEach(v => { v.pause(); v.currentTime = parseFloat(a.dataset.t); });
    window.scrollTo({top: 0, behavior: "smooth"});
  });
}
"""


def render_page(paths: list[Path], page_dir: Path, *, video: Path | None = None, source: Path | None = None) -> str:
    """The gallery page for `paths` as HTML text, with links relative to `page_dir`."""
    videos = [(label, p) for label, p in (("Source", source), ("Output", video)) if p is not None]
    video_html = ""
    if videos:
        # both carry the same soundtrack: with the two side by side, only the output is heard
        figs = "\n".join(
            f'<figure><video controls{" muted" if label == "Source" and video else ""} preload="metadata" '
            f'src="{_href(p, page_dir)}"></video>'
            f"<figcaption>{label}: {html.escape(Path(p).name)}</figcaption></figure>"
            for label, p in videos
        )
        video_html = f'<div class="videos">\n{figs}\n</div>\n'
    figures = []
    for p in paths:
        label, seconds = _caption(p)
        src, cap = _href(p, page_dir), html.escape(label)
        # with videos on the page a thumbnail seeks them; without, it opens the full-size image
        seek = f' data-t="{seconds:.3f}"' if videos and seconds is not None else ""
        figures.append(
            f'<figure><a href="{src}"{seek}><img src="{src}" alt="{cap}" loading="lazy"></a>'
            f"<figcaption>{cap}</figcaption></figure>"
        )
    return _PAGE.format(
        title=html.escape(Path(page_dir).name),
        videos=video_html,
        count=len(paths),
        video_count=len(videos),
        sheet=html.escape(quote(SHEET_NAME)),
        figures="\n".join(figures),
        script=_LOAD_SCRIPT + (_SYNC_SCRIPT if videos else ""),
    )


def make_preview(
    thumb_dir: Path, *, columns: int = 4, video: Path | None = None, source: Path | None = None
) -> tuple[Path, Path]:
    """Write `contact_sheet.png` and `index.html` into `thumb_dir`; return their paths (sheet, page).

    `video` / `source`: the output and input videos, shown side by side on the page when given.
    Raises InputError when the folder is missing or holds no thumbnails, OutputError when it is read-only.
    """
    thumb_dir = Path(thumb_dir)
    paths = find_thumbs(thumb_dir)
    sheet_path, page_path = thumb_dir / SHEET_NAME, thumb_dir / PAGE_NAME
    ok, png = cv2.imencode(".png", render_sheet(paths, columns=columns))
    if not ok:
        raise OutputError(f"{sheet_path}: PNG encoding failed")
    _write_atomic(sheet_path, png.tobytes())
    page = render_page(paths, thumb_dir, video=video, source=source)
    _write_atomic(page_path, page.encode("utf-8"))
    return sheet_path, page_path
