"""The benchmark's code path on a tiny clip and a tiny model: fields present, reference output valid.

No timing is asserted: speed is for `make bench` on a quiet machine.
"""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch

from pipeline.bench import (Case, bench_batch, cut_clip, lever_table, precision_check, print_batch_table,
                            print_table, run_bench)
from pipeline.segment import ModelConfig, build_unet, save_model

TINY = ModelConfig(work_size=(64, 48))


def test_bench_writes_every_field_and_a_valid_reference(make_video, tmp_path, capsys):
    torch.manual_seed(0)
    model = save_model(build_unet(TINY), TINY, tmp_path / "tiny.safetensors")
    src = make_video(tmp_path / "clip.mp4", size=(64, 48), frames=6)

    result = run_bench([Case("tiny", src, note="synthetic")], model=model, runs=1, ref_frames=2,
                       work=tmp_path, ref_size=(160, 96), log=lambda msg: None)   # 640×360 is slow

    json.dumps(result)   # JSON-ready
    assert result["model"] == {"path": str(model), "trained": True}
    assert {"cpu", "cores", "torch_threads_default", "versions"} <= set(result["machine"])
    assert {"max_abs_diff", "mean_abs_diff", "mask_agreement"} <= set(result["bf16_vs_fp32"])
    (clip,) = result["clips"]
    assert clip["frames"] == 6 and tuple(clip["src_size"]) == (64, 48)
    assert clip["fps"] > 0 and clip["ref_fps"] > 0 and clip["ratio"] > 0
    assert clip["ref_frames_timed"] == 2
    assert set(clip["stage_seconds"]) == {"decode", "segment", "composite", "encode"}
    assert 0 < clip["peak_rss_mb"] < 16_000
    with av.open(str(tmp_path / "tiny-reference.mp4")) as ref:   # what the reference wrote
        frames = list(ref.decode(video=0))
    assert len(frames) == 2 and (frames[0].width, frames[0].height) == (160, 96)
    print_table(result)
    assert "tiny" in capsys.readouterr().out


def test_levers_and_precision_check_run(tmp_path):
    torch.manual_seed(0)
    model = save_model(build_unet(TINY), TINY, tmp_path / "tiny.safetensors")
    rows = lever_table(model, sizes=((64, 48),), batches=(2,), repeats=1, log=lambda msg: None)
    assert [(r["precision"], r["batch"]) for r in rows] == [("fp32", 2), ("bf16", 2)]
    frames = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    check = precision_check(model, frames, backend="torch", precision="bf16")
    assert 0 <= check["max_abs_diff"] <= 1 and 0 <= check["mask_agreement"] <= 1


def test_cut_clip_copies_whole_gops_from_a_keyframe(make_video, probe, tmp_path):
    src = make_video(tmp_path / "src.mp4", frames=60, gop=10)          # a keyframe every 0.4 s
    clip = cut_clip(tmp_path / "clip.mp4", src, start=0.3, seconds=0.8)
    facts = probe(clip)
    assert facts["frames"] == 20 and facts["pts"][0] == 0 and not facts["audio"]
    with av.open(str(clip)) as c:
        assert next(c.demux(video=0)).is_keyframe


@pytest.mark.slow
def test_batch_section_times_every_configuration(make_video, tiny_model, tmp_path, capsys):
    src = make_video(tmp_path / "src.mp4", frames=60, gop=10)
    shorts = [cut_clip(tmp_path / "clips" / f"c{i}.mp4", src, start=0.4 * i, seconds=0.4) for i in range(2)]
    long_clip = cut_clip(tmp_path / "long.mp4", src, start=0, seconds=2.4)
    batch = bench_batch(shorts, long_clip, tiny_model, tmp_path / "work", chunk_seconds=0.8, ray=False,
                        log=lambda msg: None)   # Ray's own test is test_ray.py / test_chunks.py

    json.dumps(batch)
    configs = batch["configs"]
    assert [c["config"] for c in configs][:2] == ["--jobs 1", "--jobs 2"] and len(configs) == 4
    assert all((c["videos"], c["frames"], c["chunks"]) == (2, 20, 0) for c in configs[:2])
    assert [(c["videos"], c["frames"], c["chunks"]) for c in configs[2:]] == [(1, 60, 0), (1, 60, 3)]
    assert all(c["seconds"] > 0 and c["videos_per_minute"] > 0 for c in configs)
    print_batch_table(batch)
    assert "videos/min" in capsys.readouterr().out
