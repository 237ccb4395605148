"""``run_pipeline.py app``: the demo in a browser, served.

    python run_pipeline.py app [--gid N | --cpu] [--port P] [key=value ...]

Reads the arguments, loads the configuration and the models once on one device
(:class:`~referdino_plus.app.App`, the jobs), builds the page (:mod:`referdino_plus.app_page`) and
serves it on ``app.host``:``--port`` (``configs/pipeline.yaml``, section ``app``) until
interrupted. Gradio (``pip install .[app]``) is imported only once it is known to be installed,
so that without it the command says how to install it.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from collections.abc import Sequence
from typing import Any

from referdino_plus.app import App
from referdino_plus.arguments import parse_with_overrides
from referdino_plus.runtime import (
    add_single_device_arguments,
    setup_logging,
)
from referdino_plus.segmenter import EXIT_USAGE, DemoError, demo_config_and_device
from rvos.workers import bind_device

logger = logging.getLogger(__name__)

# run_pipeline.py app --help
DESCRIPTION = """\
The demo in a browser page: upload a clip (or pick an example), type one sentence per line, and
Run. The page shows the overlay video, the fusion decision of each sentence, a few mask frames,
and masks.zip to download (the same outputs as run_pipeline.py demo).

The models load once, when the server starts, on one device (GPU 0, --gid N or --cpu) and stay
loaded; jobs run one at a time, the others wait in a queue. The server listens on app.host at
--port (or app.port) and logs the address to open. The page has no login: put it behind your
own access control before app.host=0.0.0.0 lets other machines in. The limits (upload size,
clip length, frames, sentences) and the folder of each job's files (app.results_dir) are the
app section of configs/pipeline.yaml, changed with key=value.

Needs Gradio: make setup installs it (elsewhere: pip install '.[app]').
"""

INSTALL_HINT = "the app needs Gradio: pip install '.[app]' (or make setup)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_pipeline.py app",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, metavar="P", help="port to serve on (app.port)")
    add_single_device_arguments(parser)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse flags and ``key=value`` overrides in any order; ``--port`` becomes ``app.port``.

    Raises:
        DemoError: a positional argument that is not ``key=value``.
    """
    return parse_with_overrides(
        build_parser(), argv, flag_overrides={"port": "app.port"}, stray=stray_argument
    )


def stray_argument(word: str) -> DemoError:
    """The error of a positional word that is not ``key=value``."""
    return DemoError(f"unexpected argument {word!r}: overrides are key=value", EXIT_USAGE)


def start(args: argparse.Namespace) -> tuple[App, Any]:
    """Configuration, device, models and page (not yet serving).

    Raises:
        DemoError: Gradio missing, a bad configuration or device.
    """
    if importlib.util.find_spec("gradio") is None:
        raise DemoError(INSTALL_HINT, EXIT_USAGE)
    cfg, device = demo_config_and_device(args.overrides, args.gid, args.cpu)
    bind_device(device)
    from referdino_plus.app_page import build_page

    app = App(cfg, device)
    app.load_models()
    return app, build_page(app)


def main(argv: Sequence[str] | None = None) -> int:
    """``run_pipeline.py app ...``: serve until interrupted; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging(quiet="-q" in argv or "--quiet" in argv)
    try:
        args = parse_args(argv)
        app, page = start(args)
    except DemoError as err:
        logger.error("%s", err)
        return err.exit_code
    from referdino_plus.app_page import launch

    try:
        launch(page, app)
    except KeyboardInterrupt:
        logger.info("stopped")
    return 0
