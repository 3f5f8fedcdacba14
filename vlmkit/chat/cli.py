"""``vlmkit chat`` / tools/chat.py: argument parsing; the terminal chat, or the web chat with ``--web``."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vlmkit.chat.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860


def build_parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Chat with a trained model about images: in the terminal (lines of stdin), or in the "
                               "browser with --web. Commands and prompt formats: docs/chat.md.")
    source = parser.add_argument_group("model")
    source.add_argument("--run", dest="run_dir", metavar="RUN_DIR",
                        help="a training run's output directory (its config.yaml and model.safetensors)")
    source.add_argument("--cfg-path", help="a project YAML instead of --run (then --checkpoint gives the weights)")
    source.add_argument("--checkpoint", help="trained weights: model.safetensors, checkpoints/*.pt or an OpenFlamingo "
                                             "checkpoint.pt (default with --run: RUN_DIR/model.safetensors)")
    source.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. model.dtype=float32")
    source.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import a module that registers components (repeatable); same as run.imports")
    source.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: the run's run.device)")
    source.add_argument("--seed", type=int, default=0, help="seed of sampled replies (temperature > 0)")
    limits = parser.add_argument_group("images")
    limits.add_argument("--max-image-bytes", type=int, default=DEFAULT_MAX_BYTES, metavar="N",
                        help=f"largest image file accepted (default {DEFAULT_MAX_BYTES:,})")
    limits.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"largest width x height accepted (default {DEFAULT_MAX_PIXELS:,})")
    web = parser.add_argument_group("web")
    web.add_argument("--web", action="store_true", help="serve the chat as a web page (needs vlmkit[chat])")
    web.add_argument("--host", default=DEFAULT_HOST,
                     help=f"address to bind (default {DEFAULT_HOST}: this machine only; see docs/chat.md before "
                          "binding another)")
    web.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for user errors")
    return parser


def chat_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """The ``vlmkit chat`` command (and tools/chat.py)."""
    from vlmkit.cli import guarded

    args = build_parser(prog).parse_args(argv)

    def run(a: argparse.Namespace) -> int:
        import torch

        from vlmkit.chat.engine import ChatEngine
        from vlmkit.chat.images import ImageLimits
        from vlmkit.errors import ConfigError

        if a.max_image_bytes < 1 or a.max_image_pixels < 1:
            raise ConfigError("--max-image-bytes and --max-image-pixels must be >= 1")
        if not 0 < a.port < 65536:
            raise ConfigError(f"--port must be in 1..65535, got {a.port}")
        if a.web:  # a missing gradio stops before the model is loaded
            from vlmkit.extras import require

            require("gradio", "chat", "vlmkit chat --web")
            if a.host not in LOOPBACK_HOSTS:
                print(f"warning: --host {a.host} serves the chat to every machine that can reach this one, without "
                      "authentication (docs/chat.md § Security)", file=sys.stderr, flush=True)
        torch.manual_seed(a.seed)
        engine = ChatEngine.load(a.run_dir, a.cfg_path, a.checkpoint, a.options, a.imports, a.device,
                                 ImageLimits(a.max_image_bytes, a.max_image_pixels))
        if a.web:
            from vlmkit.chat.web import serve

            return serve(engine, a.host, a.port)
        from vlmkit.chat.terminal import TerminalChat

        return TerminalChat(engine).run(sys.stdin)

    return guarded(run, args)
