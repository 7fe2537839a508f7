"""MP4 writing: frame count, size, rate and content survive a round trip through PyAV."""

import av
import pytest
import torch

from sana_wan.video.mp4 import split_videos, write_mp4


def _read(path):
    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, stream.codec_context.name, float(stream.average_rate)


def test_round_trip(tmp_path):
    t = torch.linspace(0, 1, 9)[:, None, None, None]
    frames = (t * torch.ones(9, 32, 48, 3)).clone()
    frames[..., 0] = torch.linspace(0, 1, 48)
    path = str(tmp_path / "a.mp4")
    write_mp4(frames, path, fps=16, crf=0)
    decoded, codec, rate = _read(path)
    assert (len(decoded), decoded[0].shape, codec, rate) == (9, (32, 48, 3), "h264", 16.0)
    back = torch.tensor(decoded[4], dtype=torch.float32) / 255
    assert (back - frames[4]).abs().mean() < 0.02


def test_odd_sizes_are_padded_to_even(tmp_path):
    path = str(tmp_path / "odd.mp4")
    write_mp4(torch.rand(5, 33, 47, 3), path, fps=8)
    decoded, _, _ = _read(path)
    assert decoded[0].shape == (34, 48, 3) and len(decoded) == 5


def test_split_batch_of_videos():
    frames = torch.arange(18.0).reshape(18, 1, 1, 1).expand(18, 2, 2, 3)
    videos = split_videos(frames, 9)
    assert [v.shape[0] for v in videos] == [9, 9] and videos[1][0, 0, 0, 0] == 9
    assert len(split_videos(frames, 0)) == 1
    with pytest.raises(ValueError, match="do not split"):
        split_videos(frames, 7)


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="fps"):
        write_mp4(torch.rand(2, 8, 8, 3), str(tmp_path / "x.mp4"), fps=0)
    with pytest.raises(ValueError, match="frames"):
        write_mp4(torch.rand(8, 8, 3), str(tmp_path / "x.mp4"), fps=16)
