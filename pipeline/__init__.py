"""blurvid: blur or replace the background behind people in video files.

    from pipeline.process import process_video
    process_video("in.mp4", "out.mp4")
"""

__version__ = "0.1.0"
