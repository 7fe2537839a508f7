"""Video files: frames to H.264 MP4 with PyAV."""
