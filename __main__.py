"""`python -m <pack folder name> run ...` or `python <pack folder> run ...`: the queue client (api_client/)."""

import os
import sys

if __package__:
    from .api_client.cli import main
else:  # run as `python <folder>`: the folder itself is on sys.path, not its parent
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from api_client.cli import main

sys.exit(main())
