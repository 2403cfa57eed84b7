"""Long videos in pieces: split at keyframes, processed apart (in parallel, on Ray), joined without
re-encoding into the file one pass would have written.

    spans = plan_chunks(Path("talk.mp4"), target_seconds=60)            # one Span per chunk
    for i, span in enumerate(spans):                                     # anywhere, in any order
        process_video("talk.mp4", folder / f"{i:04d}.mp4", options, span=span)
    join_chunks("talk.mp4", [folder / f"{i:04d}.mp4" for i in ...], Path("out.mp4"), t0=spans[0].t0)

    process_chunked("talk.mp4", Path("out.mp4"), options, chunk_seconds=60)   # all of that, here

The plan reads the video packets' timestamps and keyframe flags from the demuxer (nothing is
decoded) and groups whole GOPs into chunks of about `target_seconds`. A chunk decodes from its
keyframe, keeps the frames whose pts fall in [start, end) and encodes them, with the same encoder
settings as one pass, into a video-only mp4 that keeps the whole output's timestamps (Span carries
the output clock). The join copies the chunks' H.264 packets in order, checks that every chunk's
codec parameters (SPS/PPS) are the same, and copies the source's audio packet for packet beside them
(video.AudioCopy), atomically. Same frames, same timestamps, same audio as one pass; the pictures
differ only where the encoder placed its keyframes and where smoothing restarted.

Temporal mask smoothing (ProcessOptions.smooth) restarts at each chunk boundary: a chunk's first
frame is smoothed against nothing, as a video's first frame is. Video backgrounds stay aligned
(frames keep their numbers in the whole video). Only mp4/mov and mkv/webm inputs are split (their
demuxers seek exactly to a keyframe); other files, and videos shorter than 1.5 chunks, stay whole.

Chunk files go to a hidden folder beside the output (`.NAME.chunks-XXXX/`), which all workers must see
(a shared filesystem under Ray); it is removed once the video is joined or has failed.
"""

from __future__ import annotations

import bisect
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import av.error

from pipeline.batch import Job, JobResult, process_job
from pipeline.errors import BlurvidError, InputError, OutputError
from pipeline.video import AudioCopy, Span, VideoReader, atomic_output, open_input, snap_to_grid, video_stream

if TYPE_CHECKING:  # pipeline.process imports torch; workers set their thread counts before that
    from pipeline.process import ProcessOptions, ProcessReport
    from pipeline.segment import Segmenter

RAY_CHUNK_SECONDS = 60.0   # `batch --ray` default: videos longer than 90 s go in ~60 s chunks
MIN_TAIL = 0.5             # a last piece shorter than this many chunks joins the chunk before it
# Containers whose demuxers seek exactly to a keyframe by its timestamp (an index in the file).
SPLITTABLE = ("mov", "mp4", "matroska", "webm")


# --- planning -------------------------------------------------------------------------------------

def plan_chunks(src: str | Path, target_seconds: float) -> list[Span]:
    """Spans of about `target_seconds`, each starting at a keyframe, covering every frame of `src` once.

    One span (the whole video) when it is shorter than 1.5 × target_seconds, has a single keyframe,
    or cannot be split exactly (see the module docstring). InputError if src is not a readable video.
    """
    src = Path(src)
    with VideoReader(src) as reader:   # the same frame rate and clock as processing uses
        info = reader.info
        first_pts = next(iter(reader)).pts
    with open_input(src) as container:
        stream = video_stream(container, src)
        audio_start = Fraction(container.start_time or 0, av.time_base) if container.streams.audio else None
        short = info.duration is not None and info.duration < (1 + MIN_TAIL) * target_seconds
        splittable = any(name in SPLITTABLE for name in container.format.name.split(","))
        if target_seconds <= 0 or short or not splittable or first_pts is None:
            return [_whole(first_pts, info.time_base, audio_start)]
        pts, cuts = _scan(container, stream, src)
    if pts is not None:
        pts.sort()                                  # presentation order: what the decoder gives
    if pts is None or not cuts or pts[0] != first_pts:   # the packets do not tell how frames will decode
        return [_whole(first_pts, info.time_base, audio_start)]

    tb, fps = info.time_base, info.fps
    target_seconds = Fraction(target_seconds).limit_denominator(10**6)   # 0.8 is 4/5, as 20 frames at 25 fps
    last = pts[-1] * tb
    starts = [(pts[0], None)]                       # (pts of the first frame, where to seek for it)
    for key_pts, seek in cuts:
        at = key_pts * tb
        if at - starts[-1][0] * tb >= target_seconds and last - at >= MIN_TAIL * target_seconds:
            starts.append((key_pts, seek))
    t0 = pts[0] * tb if audio_start is None else min(pts[0] * tb, audio_start)

    # The writer's frame grid at each chunk's first frame, replayed over every frame before it, so a
    # chunk written on its own puts its frames exactly where one pass would.
    spans, grid, n = [], None, 0
    for i, (start, seek) in enumerate(starts):
        first_index = bisect.bisect_left(pts, start)
        while n < first_index:
            _, grid = snap_to_grid(grid, n, pts[n] * tb, fps, tb)
            n += 1
        end = starts[i + 1][0] if i + 1 < len(starts) else None
        spans.append(Span(start=start, end=end, seek=seek, first_index=first_index, t0=t0, grid=grid))
    return spans


def _scan(container, stream, src: Path) -> tuple[list[int] | None, list[tuple[int, int]]]:
    """Every shown frame's pts (None if one lacks it) and the keyframes a chunk can start at.

    A keyframe is a cut when every packet before it (in decode order) shows before it: then decoding
    from it gives every frame from its pts on (an open GOP's leading frames show before it, so they
    belong to the chunk before, which decodes on past the keyframe to reach them).
    """
    pts: list[int] = []
    cuts: list[tuple[int, int]] = []
    shown_max = None
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:   # end marker; hidden by an edit list
                continue
            if packet.pts is None:
                return None, []
            if packet.is_keyframe and pts and packet.pts > shown_max:
                cuts.append((packet.pts, packet.dts if packet.dts is not None else packet.pts))
            shown_max = packet.pts if shown_max is None else max(shown_max, packet.pts)
            pts.append(packet.pts)
    except av.error.FFmpegError as e:
        raise InputError(f"{src}: cannot read its video packets ({e})") from e
    return pts, cuts


def _whole(first_pts: int | None, tb: Fraction, audio_start: Fraction | None) -> Span:
    first = Fraction(first_pts or 0) * tb
    t0 = first if audio_start is None else min(first, audio_start)
    return Span(start=first_pts or 0, end=None, seek=None, first_index=0, t0=t0, grid=None)


# --- joining --------------------------------------------------------------------------------------

def join_chunks(src: str | Path, chunks: list[Path], dst: Path, *, t0: Fraction,
                overwrite: bool = False) -> int:
    """The chunks' video packets in order plus src's audio into `dst` (atomically); returns the frames.

    `t0` is the source time the chunks were written from (Span.t0): the audio moves by the same.
    OutputError if the chunks' H.264 parameters differ (they could not be played as one stream) or
    their timestamps do not follow on from each other.
    """
    src, dst = Path(src), Path(dst)
    with atomic_output(dst, overwrite=overwrite) as tmp:
        return _remux(src, chunks, tmp, t0)


def _remux(src: Path, chunks: list[Path], tmp: Path, t0: Fraction) -> int:
    frames = 0
    with av.open(str(chunks[0])) as first:
        template = first.streams.video[0]
        params = _codec_params(template)
        out = av.open(str(tmp), "w", container_options={"movflags": "+faststart"})
        audio = None
        try:
            video = out.add_stream_from_template(template)
            audio = AudioCopy(out, src)
            out.start_encoding()
            last_dts = None
            for path in chunks:
                with av.open(str(path)) as chunk:
                    stream = chunk.streams.video[0]
                    if _codec_params(stream) != params:
                        raise OutputError(
                            f"{path.name}: encoded with other H.264 parameters than {chunks[0].name} "
                            f"({_codec_params(stream)} vs {params}); the chunks cannot be joined without "
                            "re-encoding: process this video without --chunk-seconds")
                    for packet in chunk.demux(stream):
                        if packet.size == 0:
                            continue
                        at = packet.dts * packet.time_base
                        if last_dts is not None and at <= last_dts:
                            raise OutputError(f"{path.name}: timestamps go back at the join ({float(at):.3f} s"
                                              f" after {float(last_dts):.3f} s); process this video whole")
                        last_dts = at
                        if audio.tracks:
                            audio.mux_until(at, t0)
                        packet.stream = video
                        out.mux(packet)
                        frames += 1
            if audio.tracks:
                audio.mux_until(None, t0)
                audio.flush(t0)
        finally:
            out.close()
            if audio is not None:
                audio.close()
    return frames


def _codec_params(stream) -> tuple:
    cc = stream.codec_context
    return (cc.name, cc.width, cc.height, cc.format.name if cc.format else None,
            bytes(cc.extradata or b""))


# --- chunked jobs ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChunkJob:
    """One chunk of a batch Job's video: processed like a job, into a chunk file of that video."""

    job: Job      # the video this is a piece of
    span: Span
    index: int    # 0-based
    count: int    # chunks of the video
    path: Path    # the chunk file, in the video's chunk folder

    @property
    def name(self) -> str:
        return f"{self.job.name} [chunk {self.index + 1}/{self.count}]"

    @property
    def key(self) -> str:
        return self.job.key


def run_piece(piece: Job | ChunkJob, options: ProcessOptions, model_path: Path | None, device: str,
              segmenter: Segmenter | None = None, model_kwargs: dict[str, Any] | None = None) -> JobResult:
    """What a worker (process or Ray task) does with a piece of a batch: a whole video or one chunk."""
    if isinstance(piece, Job):
        return process_job(piece, options, model_path, device, segmenter, model_kwargs)
    from pipeline.batch import _segmenter
    from pipeline.process import process_video

    try:
        report = process_video(piece.job.src, piece.path, replace(options, overwrite=True),
                               segmenter=segmenter or _segmenter(model_path, device, model_kwargs or {}),
                               span=piece.span)
    except BlurvidError as e:
        return JobResult(piece.name, piece.key, "failed", error=str(e))
    return JobResult(piece.name, piece.key, "done", frames=report.frames, fps=report.fps,
                     seconds=report.seconds)


class ChunkedVideo:
    """A video split into chunks: its chunk folder, its ChunkJobs, and the join once all are back.

        video = ChunkedVideo(job, spans, options)
        for chunk in video.chunks: ...run_piece(chunk, ...) anywhere...; video.add(chunk, result)
        result = video.finish()     # joined (or the first chunk's failure); the folder is removed

    The folder is removed by finish() and by cleanup() (call it if the batch stops early).
    """

    def __init__(self, job: Job, spans: list[Span], options: ProcessOptions):
        self.job, self.options, self.t0 = job, options, spans[0].t0
        _check_free(job.dst, options)
        try:
            job.dst.parent.mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix=f".{job.dst.stem}.chunks-", dir=job.dst.parent))
        except OSError as e:
            raise OutputError(f"{job.dst.parent}: cannot write chunks here ({e.strerror})") from e
        self.chunks = [ChunkJob(job, span, i, len(spans), self.folder / f"{i:04d}.mp4")
                       for i, span in enumerate(spans)]
        self.results: dict[int, JobResult] = {}

    def add(self, chunk: ChunkJob, result: JobResult) -> bool:
        """Records a chunk's result; True once every chunk is back."""
        self.results[chunk.index] = result
        return len(self.results) == len(self.chunks)

    def finish(self) -> JobResult:
        """Joins the chunks into the job's output (with thumbnails); always removes the chunk folder."""
        job = self.job
        try:
            failed = [r for _, r in sorted(self.results.items()) if r.status != "done"]
            if failed:
                return JobResult(job.name, job.key, "failed", error=failed[0].error, chunks=len(self.chunks))
            started = time.perf_counter()
            try:
                frames = self._join()
            except BlurvidError as e:
                return JobResult(job.name, job.key, "failed", error=str(e), chunks=len(self.chunks))
            seconds = sum(r.seconds for r in self.results.values()) + time.perf_counter() - started
            return JobResult(job.name, job.key, "done", frames=frames, fps=frames / seconds if seconds else 0.0,
                             seconds=seconds, chunks=len(self.chunks))
        finally:
            self.cleanup()

    def _join(self) -> int:
        from pipeline.process import _ThumbnailSaver, thumbs_dir_for

        job, options = self.job, self.options
        with atomic_output(job.dst, overwrite=options.overwrite) as tmp:
            frames = _remux(job.src, [c.path for c in self.chunks], tmp, self.t0)
            with _ThumbnailSaver(thumbs_dir_for(job.dst), options.thumb_every, options.overwrite,
                                 video=job.dst, source=job.src) as thumbs:
                if thumbs.tmp is not None:
                    for chunk in self.chunks:
                        for jpg in sorted(thumbs_dir_for(chunk.path).glob("*.jpg")):
                            jpg.rename(thumbs.tmp / jpg.name)
        return frames

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _check_free(dst: Path, options: ProcessOptions) -> None:
    """Refuses before any chunk is processed what the join would refuse at the end."""
    from pipeline.process import thumbs_dir_for

    if dst.is_dir():
        raise OutputError(f"{dst}: is a folder; give a file name for the output")
    if dst.exists() and not options.overwrite:
        raise OutputError(f"{dst}: already exists (pass overwrite to replace it)")
    if options.thumb_every and thumbs_dir_for(dst).exists() and not options.overwrite:
        raise OutputError(f"{thumbs_dir_for(dst)}: thumbnail folder exists (use --overwrite to replace it)")
    if options.output_alpha is not None or options.matte is not None:
        raise ValueError("a chunked video cannot have extra outputs (output_alpha, matte)")


def split_jobs(todo: list[tuple[Job, ProcessOptions, dict]], chunk_seconds: float | None,
               ) -> tuple[list[tuple[Job | ChunkJob, ProcessOptions, dict]], dict[str, ChunkedVideo],
                          list[tuple[Job, dict, JobResult]]]:
    """The batch's work as pieces: whole videos, and the chunks of those longer than 1.5 chunks.

    Returns (pieces with their options and manifest record, the chunked videos by output key,
    (job, record, failed result) for videos that could not even be planned).
    """
    if not chunk_seconds:
        return list(todo), {}, []
    pieces, chunked, failed = [], {}, []
    for job, opts, record in todo:
        try:
            spans = plan_chunks(job.src, chunk_seconds)
            if len(spans) == 1:
                pieces.append((job, opts, record))
                continue
            video = ChunkedVideo(job, spans, opts)
        except BlurvidError as e:
            failed.append((job, record, JobResult(job.name, job.key, "failed", error=str(e))))
            continue
        chunked[job.key] = video
        pieces += [(chunk, opts, record) for chunk in video.chunks]
    return pieces, chunked, failed


def process_chunked(src: str | Path, dst: str | Path, options: ProcessOptions, *, chunk_seconds: float,
                    segmenter: Segmenter | None = None) -> ProcessReport:
    """`process_video` in chunks of about `chunk_seconds`, one after another here, then joined.

    The report has the frames and seconds (no stage times). Raises the first BlurvidError, like
    process_video. The way to test chunking on one machine; batch runs the chunks in parallel.
    """
    from pipeline.process import ProcessReport, process_video, thumbs_dir_for

    src, dst = Path(src), Path(dst)
    spans = plan_chunks(src, chunk_seconds)
    if len(spans) == 1:
        return process_video(src, dst, options, segmenter=segmenter)
    video = ChunkedVideo(Job(src=src, dst=dst, name=src.name, key=dst.name), spans, options)
    try:
        for chunk in video.chunks:
            result = run_piece(chunk, options, None, "cpu", segmenter)
            video.add(chunk, result)
            if result.status != "done":
                raise _error(result)
        result = video.finish()
    finally:
        video.cleanup()
    if result.status != "done":
        raise _error(result)
    return ProcessReport(output=dst, frames=result.frames, seconds=result.seconds,
                         thumbs=thumbs_dir_for(dst) if options.thumb_every else None)


def _error(result: JobResult) -> BlurvidError:
    return BlurvidError(result.error or f"{result.name}: failed")
