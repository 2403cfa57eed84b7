"""The preview gallery in a real browser: headless Chromium renders the page of a processed clip.

Skips when no Chromium is installed (`make browser` installs one; `make test` runs it first).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.preview import PAGE_NAME, find_thumbs

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")  # as in the Makefile
WINDOW = (1280, 900)
BG = (32, 32, 32)  # the page's background, #202020


@pytest.fixture
def chromium() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip("chromium not installed: run `make browser`")


@pytest.fixture
def gallery(make_video, tiny_model, tmp_path) -> Path:
    """index.html of a real run: a tiny clip processed (4 thumbnails), then `blurvid preview`."""
    src = make_video(tmp_path / "in.mp4", size=(64, 48), frames=12)
    run = CliRunner().invoke(main, ["process", str(src), "-o", str(tmp_path / "out.mp4"), "--model", str(tiny_model),
                                    "--thumb-every", "3", "--quiet"])
    assert run.exit_code == 0, run.output
    run = CliRunner().invoke(main, ["preview", str(tmp_path / "out_thumbs")])
    assert run.exit_code == 0, run.output
    return tmp_path / "out_thumbs" / PAGE_NAME


def headless(chromium: str, page: Path, *args: str) -> str:
    """Run headless Chromium on `page` with extra `args`; its stdout."""
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
        "--mute-audio", "--no-first-run", f"--user-data-dir={page.parent.parent / 'chromium-profile'}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=5000", *args, page.as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def body_data(dom: str) -> dict[str, str]:
    """The data-* attributes of <body> in a dumped DOM: {"images-loaded": "4", ...}."""
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:2000]
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body[1]))


def regions(shot: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (x, y, w, h) of the large areas of the screenshot that are not page background."""
    ink = (np.abs(shot.astype(int) - BG).max(axis=2) > 8).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=4)
    return [tuple(stats[i, :4]) for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] > 2000]  # text is smaller


def test_gallery_renders_in_chromium(chromium, gallery, tmp_path):
    thumbs = find_thumbs(gallery.parent)
    assert len(thumbs) == 4
    dom = headless(chromium, gallery, "--dump-dom")
    data = body_data(dom)
    assert data["images-total"] == data["images-loaded"] == "4" and data["images-failed"] == "0", data
    assert data["videos-total"] == data["videos-loaded"] == "2" and data["videos-failed"] == "0", data

    shot_path = tmp_path / "shot.png"
    headless(chromium, gallery, f"--screenshot={shot_path}")
    shot = cv2.imread(str(shot_path))
    assert shot is not None, f"{shot_path}: no screenshot"
    assert shot.shape[:2] == (WINDOW[1], WINDOW[0])
    assert shot.std() > 20 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 500  # not blank

    # every thumbnail is on screen: some region of the page looks like it, scaled up, and no two
    # thumbnails claim the same region (the moving square tells them apart)
    boxes = regions(shot)
    best = []
    for p in thumbs:
        img = cv2.imread(str(p)).astype(np.float32)
        diffs = [np.abs(cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR) - shot[y : y + h, x : x + w]).mean()
                 for x, y, w, h in boxes]
        k = int(np.argmin(diffs))
        assert diffs[k] < 5, f"{p.name} not on the page (closest region {boxes[k]} differs by {diffs[k]:.1f})"
        best.append(k)
    assert len(set(best)) == len(thumbs), [boxes[k] for k in best]


def test_broken_links_are_reported(chromium, gallery):
    find_thumbs(gallery.parent)[1].unlink()
    (gallery.parent.parent / "in.mp4").unlink()
    data = body_data(headless(chromium, gallery, "--dump-dom"))
    assert (data["images-loaded"], data["images-failed"]) == ("3", "1"), data
    assert (data["videos-loaded"], data["videos-failed"]) == ("1", "1"), data
