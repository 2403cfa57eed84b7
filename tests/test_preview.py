"""Contact sheet and gallery page: grid size, labels, links, escaping, errors, the recorded videos."""

import html
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.preview import (
    GAP,
    LABEL_H,
    MAX_TILE_W,
    PAGE_NAME,
    VIDEOS_NAME,
    find_videos,
    make_preview,
    parse_thumb_name,
    record_videos,
    sheet_size,
    thumb_name,
)

TW, TH = 96, 54  # thumbnail size: small enough to stay unscaled on the sheet


def write_thumbs(folder: Path, n: int, size: tuple[int, int] = (TW, TH), fps: float = 25.0, step: int = 25) -> list[Path]:
    """n distinct thumbnails (a flat colour with a bright square) named as process.py names them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        img = np.full((size[1], size[0], 3), (40 + 20 * k % 200, 90, 160), np.uint8)
        cv2.rectangle(img, (5 + 3 * k, 5), (25 + 3 * k, 25), (250, 250, 250), -1)
        p = folder / thumb_name(k * step, k * step / fps)
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


def test_thumb_name_round_trip():
    assert thumb_name(25, 1.0) == "000025_1.000s.jpg"
    assert parse_thumb_name("000025_1.000s.jpg") == (25, 1.0)
    assert parse_thumb_name(thumb_name(1234567, 3723.0416)) == (1234567, 3723.042)
    for bad in ("000025.jpg", "25_1.000s.jpg", "000025_1.000s.jpg.tmp", "contact_sheet.png"):
        with pytest.raises(ValueError):
            parse_thumb_name(bad)


@pytest.mark.parametrize("n, columns", [(1, 4), (4, 4), (5, 4), (9, 4), (7, 3)])
def test_sheet_grid_size(tmp_path, n, columns):
    write_thumbs(tmp_path, n)
    sheet, _ = make_preview(tmp_path, columns=columns)
    img = cv2.imread(str(sheet))
    cols, rows = min(n, columns), math.ceil(n / columns)
    assert img.shape[:2] == (rows * (TH + LABEL_H + GAP) + GAP, cols * (TW + GAP) + GAP)
    assert (img.shape[1], img.shape[0]) == sheet_size(n, columns, (TW, TH))


def test_large_thumbs_are_scaled_down(tmp_path):
    write_thumbs(tmp_path, 3, size=(1280, 720))
    img = cv2.imread(str(make_preview(tmp_path, columns=2)[0]))
    assert (img.shape[1], img.shape[0]) == sheet_size(3, 2, (MAX_TILE_W, MAX_TILE_W * 720 // 1280))


def test_tiles_are_thumbs_and_labels_are_drawn(tmp_path):
    paths = write_thumbs(tmp_path, 6)
    sheet = cv2.imread(str(make_preview(tmp_path, columns=3)[0])).astype(int)
    for k, p in enumerate(paths):
        row, col = divmod(k, 3)
        x, y = GAP + col * (TW + GAP), GAP + row * (TH + LABEL_H + GAP)
        thumb = cv2.imread(str(p)).astype(int)
        # the frame itself is untouched: the label goes in a strip below, not over the picture
        assert np.abs(sheet[y : y + TH, x : x + TW] - thumb).max() <= 1
        strip = sheet[y + TH : y + TH + LABEL_H, x : x + TW]
        # text drawn: light pixels on the dark strip, unlike the bottom rows of the thumbnail
        assert (strip.max(axis=2) > 128).sum() > 20
        assert np.abs(strip - thumb[-LABEL_H:]).mean() > 20
    # each label is different (frame numbers differ)
    s0 = sheet[GAP + TH : GAP + TH + LABEL_H, GAP : GAP + TW]
    s1 = sheet[GAP + TH : GAP + TH + LABEL_H, 2 * GAP + TW : 2 * GAP + 2 * TW]
    assert np.abs(s0 - s1).sum() > 0


def test_thumbs_in_frame_order(tmp_path):
    # numeric, not by name: "1000000_..." sorts before "999999_..." as text; hand-added images go last
    names = ["extra.jpg", thumb_name(1_000_000, 40000.0), thumb_name(999_999, 39999.96), thumb_name(7, 0.28)]
    for name in names:
        cv2.imwrite(str(tmp_path / name), np.zeros((TH, TW, 3), np.uint8))
    page = make_preview(tmp_path)[1].read_text(encoding="utf-8")
    pos = [page.index(f'src="{name}"') for name in names]
    assert pos[3] < pos[2] < pos[1] < pos[0]


def test_page_references_every_thumb(tmp_path):
    paths = write_thumbs(tmp_path, 5)
    sheet, page_path = make_preview(tmp_path)
    assert sheet.parent == page_path.parent == tmp_path
    page = page_path.read_text(encoding="utf-8")
    for p in paths:
        assert f'src="{p.name}"' in page
        index, seconds = parse_thumb_name(p.name)
        assert f"frame {index}" in page
    assert 'href="contact_sheet.png"' in page
    assert "<video" not in page  # no videos given


def test_page_escapes_odd_names(tmp_path):
    odd_dir = tmp_path / 'run <1> & "two"'
    write_thumbs(odd_dir, 2)
    # a hand-added image: not named by thumb_name, still shown, captioned with its own name
    cv2.imencode(".jpg", np.zeros((TH, TW, 3), np.uint8))[1].tofile(odd_dir / 'hand <b> "x" & #1.jpg')
    video = tmp_path / "out <final>.mp4"
    source = tmp_path / "in & 'raw'.mp4"
    page = make_preview(odd_dir, video=video, source=source)[1].read_text(encoding="utf-8")
    assert "<b>" not in page and "<1>" not in page
    assert "&lt;b&gt;" in page  # the caption, escaped
    # links are URL-quoted and relative to the page, so they resolve to the real files
    assert 'src="hand%20%3Cb%3E%20%22x%22%20%26%20%231.jpg"' in page
    assert 'src="../out%20%3Cfinal%3E.mp4"' in page
    assert 'src="../in%20%26%20%27raw%27.mp4"' in page
    assert html.escape(odd_dir.name) in page
    assert page.count("<video") == 2
    assert page.index("in &amp; &#x27;raw&#x27;.mp4") < page.index("out &lt;final&gt;.mp4")  # source left


def test_rerun_ignores_own_sheet(tmp_path):
    write_thumbs(tmp_path, 3)
    cv2.imwrite(str(tmp_path / ".contact_sheet.partial.png"), np.zeros((TH, TW, 3), np.uint8))  # a crash's leftover
    first = cv2.imread(str(make_preview(tmp_path)[0]))
    assert (first.shape[1], first.shape[0]) == sheet_size(3, 4, (TW, TH))
    second = cv2.imread(str(make_preview(tmp_path)[0]))
    assert first.shape == second.shape
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(
        [thumb_name(k * 25, k) for k in range(3)] + ["contact_sheet.png", "index.html"]
    )


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("not a thumbnail")
    with pytest.raises(InputError, match="no thumbnails found"):
        make_preview(tmp_path)
    assert not (tmp_path / "index.html").exists()


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="missing"):
        make_preview(tmp_path / "missing")


def test_unreadable_thumb(tmp_path):
    write_thumbs(tmp_path, 1)
    (tmp_path / thumb_name(50, 2.0)).write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match="000050_2.000s.jpg"):
        make_preview(tmp_path)


def test_recorded_videos_are_found_relative_to_the_folder(tmp_path):
    run = tmp_path / "run"
    thumbs = run / "out" / "clip_thumbs"
    write_thumbs(thumbs, 2)
    for p in (run / "out" / "clip.mp4", run / "in" / "clip.mov"):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    record = record_videos(thumbs, video=run / "out" / "clip.mp4", source=run / "in" / "clip.mov")
    assert json.loads(record.read_text()) == {"video": "../clip.mp4", "source": "../../in/clip.mov"}
    # moved together, the links still hold
    moved = tmp_path / "moved"
    run.rename(moved)
    thumbs = moved / "out" / "clip_thumbs"
    found = find_videos(thumbs)
    assert {k: p.resolve() for k, p in found.items()} == {
        "video": (moved / "out" / "clip.mp4").resolve(), "source": (moved / "in" / "clip.mov").resolve()}
    page = make_preview(thumbs, **found)[1].read_text(encoding="utf-8")
    assert 'src="../../in/clip.mov"' in page and 'src="../clip.mp4"' in page
    assert "clip.jpg" not in page and record.name not in page  # the record is no thumbnail


def test_find_videos_without_a_record(tmp_path):
    thumbs = tmp_path / "out_thumbs"
    write_thumbs(thumbs, 1)
    assert find_videos(thumbs) == {}  # nothing beside it
    (tmp_path / "out.mp4").write_bytes(b"")
    assert find_videos(thumbs) == {"video": tmp_path / "out.mp4"}  # guessed from the folder's name


def test_find_videos_drops_missing_files_and_refuses_a_bad_record(tmp_path):
    thumbs = tmp_path / "out_thumbs"
    write_thumbs(thumbs, 1)
    (tmp_path / "out.mp4").write_bytes(b"")
    record_videos(thumbs, video=tmp_path / "out.mp4", source=tmp_path / "gone.mp4")
    assert find_videos(thumbs) == {"video": thumbs / "../out.mp4"}
    for bad in ("{not json", "[1, 2]", '{"video": 3}'):
        (thumbs / VIDEOS_NAME).write_text(bad)
        with pytest.raises(InputError, match="videos.json: not a video record"):
            find_videos(thumbs)


def test_page_marks_loaded_images_and_mutes_the_source(tmp_path):
    write_thumbs(tmp_path / "t", 3)
    page = make_preview(tmp_path / "t")[1].read_text(encoding="utf-8")
    assert '<body data-images-total="3" data-videos-total="0">' in page
    assert "count(document.images" in page  # the load marker runs without videos too (see test_preview_browser)
    assert "seeked" not in page  # ...the video sync does not
    page = make_preview(tmp_path / "t", video=tmp_path / "o.mp4", source=tmp_path / "i.mp4")[1].read_text()
    assert page.count("<video") == 2 and page.count(" muted") == 1  # one soundtrack: the output's
    assert page.index(" muted") < page.index("Source: i.mp4") < page.index("Output: o.mp4")
    assert "seeked" in page and "count(document.images" in page
    only_source = make_preview(tmp_path / "t", source=tmp_path / "i.mp4")[1].read_text()
    assert " muted" not in only_source


def test_process_records_its_videos_for_preview(make_video, tiny_model, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    src = make_video(tmp_path / "in" / "clip.mp4", size=(64, 48), frames=6)
    out = tmp_path / "out" / "blurred.mp4"
    run = CliRunner().invoke(main, ["process", str(src), "-o", str(out), "--model", str(tiny_model),
                                    "--thumb-every", "3", "--quiet"])
    assert run.exit_code == 0, run.output
    thumbs = tmp_path / "out" / "blurred_thumbs"
    assert json.loads((thumbs / VIDEOS_NAME).read_text()) == {"video": "../blurred.mp4",
                                                               "source": "../../in/clip.mp4"}
    run = CliRunner().invoke(main, ["preview", str(thumbs)])
    assert run.exit_code == 0, run.output
    page = (thumbs / PAGE_NAME).read_text(encoding="utf-8")
    assert 'src="../../in/clip.mp4"' in page and 'src="../blurred.mp4"' in page
    assert '<body data-images-total="2" data-videos-total="2">' in page

    # --video / --source win over the record
    other = make_video(tmp_path / "other.mp4", frames=2, audio=False)
    run = CliRunner().invoke(main, ["preview", str(thumbs), "--source", str(other)])
    assert run.exit_code == 0, run.output
    page = (thumbs / PAGE_NAME).read_text(encoding="utf-8")
    assert 'src="../../other.mp4"' in page and 'src="../blurred.mp4"' in page and "clip.mp4" not in page
    run = CliRunner().invoke(main, ["preview", str(thumbs), "--video", str(tmp_path / "missing.mp4")])
    assert run.exit_code == 2 and "does not exist" in run.output
