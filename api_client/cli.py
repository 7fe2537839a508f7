"""`python -m <pack> run WORKFLOW.json --server URL --set node.input=value ...`: one prompt or a batch."""

from __future__ import annotations

import argparse
import sys

from .outputs import output_path, save_new
from .queue import ClientError, fetch, follow, output_files
from .workflow import apply_overrides, load_workflow, set_input


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sana-wan", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="queue an API-format workflow and download its outputs")
    run.add_argument("workflow", help="API-format workflow JSON (e.g. workflows/api/wan_text_to_video.json)")
    run.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI's address")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="set an input; NODE is a node id or title; VALUE is JSON or text (repeatable)")
    run.add_argument("--prompts", metavar="FILE",
                     help="batch: one prompt per line, each queued with --prompt-input set to it")
    run.add_argument("--prompt-input", default="4.prompt", metavar="NODE.INPUT",
                     help="the input a --prompts line goes to (default: 4.prompt, the examples' text encode node)")
    run.add_argument("--output", default="outputs",
                     help="folder for the downloaded files, with ComfyUI's subfolders kept; an existing file is never "
                          "replaced (the new one gets _2, _3, ... before its extension)")
    run.add_argument("--timeout", type=float, default=3600, help="seconds to wait for one prompt (default 3600)")
    return parser


class _ProgressBar:
    """One line on stderr, redrawn in place; `close()` ends an unfinished one so that a message starts a new line."""

    width = 30

    def __init__(self):
        self.open = False

    def __call__(self, node: str, value: int, total: int) -> None:
        done = int(self.width * value / max(total, 1))
        sys.stderr.write(f"\rnode {node}: [{'#' * done}{'.' * (self.width - done)}] {value}/{total}")
        self.open = value < total
        sys.stderr.write("" if self.open else "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.open:
            sys.stderr.write("\n")
            self.open = False


def _graphs(args) -> list[dict]:
    graph = apply_overrides(load_workflow(args.workflow), args.overrides)
    if not args.prompts:
        return [graph]
    with open(args.prompts, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip()]
    return [set_input(graph, args.prompt_input, prompt) for prompt in prompts]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    server = args.server.rstrip("/")
    progress = _ProgressBar()
    try:
        graphs = _graphs(args)
        for index, graph in enumerate(graphs, 1):
            if len(graphs) > 1:
                print(f"prompt {index}/{len(graphs)}", file=sys.stderr)
            prompt_id = follow(server, graph, progress, args.timeout)
            for item in output_files(server, prompt_id):
                print(save_new(output_path(args.output, item), fetch(server, item)), flush=True)
    except (ClientError, ValueError, OSError) as e:
        progress.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.close()
        print("error: stopped (Ctrl+C); a queued prompt stays in ComfyUI's queue", file=sys.stderr)
        return 130
    return 0
