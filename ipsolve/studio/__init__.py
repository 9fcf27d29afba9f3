"""`ipsolve studio`: a local web page to watch, stop and steer anytime restoration and generation.

Install the optional extra (`pip install -e .[studio]`, Gradio); see docs/studio.md. The page calls the
same services as the command line (`ipsolve.studio.events`, `ipsolve.services`); Gradio is imported only by
`ipsolve.studio.app`, when the server starts.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

STUDIO_EPILOG = """\
the page (http://HOST:PORT) has a Restore tab (upload or pick an example, degrade it on the page — for
inpainting, with a mask painted on it with the brush — or load a measurement with its sidecar, watch every
preview arrive, Stop keeps the latest) and a Generate tab (keep candidates after each outer step, change
the prompt or class, continue). Every model is loaded once, at start, and shared by all runs. Every run
writes the folder `ipsolve restore` / `ipsolve generate` would write under --runs. Nothing is sent
anywhere: analytics, update checks and share links are off.
"""


def add_studio_arguments(parser):
    """The options of `ipsolve studio`."""
    from ipsolve.services.values import device_name, folder_name, port_number

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = STUDIO_EPILOG
    parser.add_argument("--model", action="append", metavar="NAME",
                        help="a model the page offers (repeatable): embedded (default), gaussian:CxHxW, "
                        "a checkpoint or diffusers folder, sd15 / dit when their weights exist")
    parser.add_argument("--port", type=port_number, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                        "machine only)")
    parser.add_argument("--runs", type=folder_name, default="studio-runs", metavar="DIR",
                        help="where run folders go (default ./studio-runs)")
    parser.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N (default: cuda when available)")


def run_studio_command(args) -> int:
    """Load the models (the page keeps them), then serve the page until Ctrl-C."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no telemetry, no update check
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_HEARTBEAT_INTERVAL", "2")  # a closed tab is noticed (and its run stopped) in ~2 s
    from ipsolve.services.checks import check_listen_address, check_writable_folder, resolve_device
    from ipsolve.models import load_model

    check_listen_address(args.host, args.port)  # before gradio, which would report another program's page
    models = list(dict.fromkeys(args.model or ["embedded"]))
    check_writable_folder(args.runs)
    device = resolve_device(args.device)
    # a model that cannot load is refused now, in one line, not on the page later; the page keeps them all
    loaded = {name: load_model(name, device=device) for name in models}
    _warm_up()
    try:
        from ipsolve.studio.app import serve
    except ImportError as error:
        raise ValueError(f"`ipsolve studio` needs Gradio: pip install -e '.[studio]' ({error})") from None
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    serve(models, args.runs, host=args.host, port=args.port, device=args.device, loaded=loaded)
    return 0


def _warm_up() -> None:
    """One tiny restore (the bundled digit, one network call of the exact Gaussian prior) in a throwaway
    folder, so the imports and first-time costs of a run are paid now and the first preview on the page is
    not late by seconds."""
    import tempfile

    from ipsolve.studio.events import EXAMPLES, RestoreForm, Studio, prepare_restore

    with tempfile.TemporaryDirectory(prefix="ipsolve-studio-warm-up-") as folder:
        studio = Studio(["gaussian:1x32x32"], folder, device="cpu")
        prepare_restore(studio, RestoreForm(image=str(EXAMPLES / "digit_clean.png"), model="gaussian:1x32x32",
                                            outer=1, inner=1)).run()
