"""The `ipsolve` command: restore, degrade, generate, eval, studio (`ipsolve --help`).

A front-end: each command parses its arguments (`ipsolve.cli.restore`, `.degrade`, `.generate`, `.eval`),
calls a service (`ipsolve.services`) and prints what came of it; `ipsolve studio` starts the other
front-end (`ipsolve.studio`). Commands other than restore and degrade are imported only when run, so
`ipsolve --help` stays fast and their dependencies never break restore / degrade.

Noise levels on the command line are in [0, 1] pixel units (DDRM's --sigma_0 convention) and are
converted once to model units (×2, the model space being [-1, 1]). Bad input gives one line
`ipsolve: error: …` on stderr and exit code 2, before anything is written.
"""
from __future__ import annotations

import argparse
import sys

from ipsolve import __version__
from ipsolve.cli.degrade import add_degrade_command
from ipsolve.cli.restore import add_restore_command
from ipsolve.services.checks import one_line
from ipsolve.services.interrupts import exit_code_for, handle_sigterm_as_interrupt

EXIT_BAD_INPUT = 2
LAZY_COMMANDS = {  # imported only when run, so their dependencies never break restore / degrade
    # name: (module, add-arguments function, run function, one-line help)
    "generate": ("ipsolve.cli.generate", "add_generate_arguments", "run_generate",
                 "sample images with (nested) diffusion"),
    "eval": ("ipsolve.cli.eval", "add_eval_arguments", "run_eval",
             "evaluate solvers over a dataset: PSNR / LPIPS / FID at every NFE budget"),
    # the one place the command line imports the studio: `ipsolve studio` starts it
    "studio": ("ipsolve.studio", "add_studio_arguments", "run_studio_command",
               "a local web page to watch, stop and steer restoration and generation (ipsolve[studio])"),
}


def main(argv=None) -> int:
    """Run the command line; return the exit code (0, 2 for bad input, 130 on Ctrl-C, 143 on SIGTERM)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    handle_sigterm_as_interrupt()
    try:
        args = build_parser(_command_in(argv)).parse_args(argv)
        code = args.run(args)
        return code if isinstance(code, int) else 0
    except (ValueError, OSError) as error:
        print(f"ipsolve: error: {one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as interrupt:
        print("ipsolve: interrupted", file=sys.stderr)
        return exit_code_for(interrupt)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message on stderr, refusing an option given twice (argparse would
    silently keep the last value)."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"ipsolve: error: {message} (see `{self.prog} --help`)\n")

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        self._refuse_repeated(args)
        return super().parse_known_args(args, namespace)

    def _refuse_repeated(self, args) -> None:
        seen = {}
        for word in args:
            if word == "--":
                break
            action = self._option_string_actions.get(word.partition("=")[0]) if word.startswith("-") else None
            if isinstance(action, argparse._StoreAction):  # one value; repeatable options append
                if action.dest in seen:
                    self.error(f"{seen[action.dest]} is given twice: give it once")
                seen[action.dest] = word.partition("=")[0]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; generate, eval and studio import their module only when `command` names them."""
    parser = _Parser(prog="ipsolve", description="Anytime restoration of degraded images with "
                     "pretrained diffusion models (Nested Diffusion with DDRM inside).")
    parser.add_argument("--version", action="version", version=f"ipsolve {__version__}")
    parser.set_defaults(run=lambda args: parser.error("choose a command: restore, degrade, generate or eval"))
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_restore_command(commands)
    add_degrade_command(commands)
    for name, (module_name, add_arguments, run, help_text) in LAZY_COMMANDS.items():
        subparser = commands.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = _import_command(name, module_name)
            getattr(module, add_arguments)(subparser)
            subparser.set_defaults(run=getattr(module, run))
    return parser


def _command_in(argv) -> str | None:
    return next((word for word in argv if not word.startswith("-")), None)


def _import_command(name, module_name):
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"`ipsolve {name}` is unavailable: {error}") from None
