"""A command-line client for ComfyUI's queue: submit a workflow, follow its progress, download its outputs.

Standard library only, so it runs from any Python without torch or ComfyUI; with websocket-client installed it shows
progress from ComfyUI's /ws, without it it polls /history.
"""
