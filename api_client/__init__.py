"""A command-line client for ComfyUI's queue: submit a workflow, follow its progress, download its outputs.

Standard library plus websocket-client only, so it runs from any Python without torch or ComfyUI.
"""
