import numpy as np
import pytest

from ls_video.video_io import contact_sheet, read_video, write_video


def moving_square(frames=6, size=32):
    video = np.zeros((frames, size, size, 3), np.uint8)
    for t in range(frames):
        video[t, 8:16, 2 + 3 * t : 10 + 3 * t] = (220, 40, 40)
    return video


@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_round_trip(tmp_path, ext):
    video = moving_square()
    path = tmp_path / f"v{ext}"
    write_video(path, video, fps=8)
    back, fps = read_video(path)
    assert back.shape == video.shape and back.dtype == np.uint8
    assert abs(fps - 8) < 0.5
    assert np.abs(back.astype(int) - video).mean() < 3


def test_mp4_is_h264_yuv420p(tmp_path):
    import av

    write_video(tmp_path / "v.mp4", moving_square())
    with av.open(str(tmp_path / "v.mp4")) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"


def test_float_input_and_bad_files(tmp_path):
    write_video(tmp_path / "f.mp4", moving_square().astype(np.float32) / 255)
    assert read_video(tmp_path / "f.mp4")[0].shape == (6, 32, 32, 3)
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(Exception):  # noqa: B017 - FFmpeg raises its own error types
        read_video(tmp_path / "bad.mp4")
    with pytest.raises(ValueError, match="extension"):
        write_video(tmp_path / "x.avi", moving_square())


def test_contact_sheet_layout():
    sheet = contact_sheet(np.stack([moving_square(4, 8)] * 2))
    assert sheet.shape == (2 * 10, 4 * 10, 3)
