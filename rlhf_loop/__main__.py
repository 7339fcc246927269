"""Command line: ``python -m rlhf_loop worker`` runs the background worker in this terminal;
``build-demo`` rewrites the demo model shipped in the repository; ``demo`` runs the whole loop
headless with simulated annotators and prints how it learns."""

from __future__ import annotations

import argparse
import os
import sys

# torch's OpenMP threads spin while waiting; beside the app (or a second worker) on a small
# machine that spinning starves the other process. Passive waiting costs little when alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from rlhf_loop.config import ConfigError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf_loop")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="keep the ranking queue full (and train, later)")
    worker.add_argument(
        "--idle-exit", type=float, default=None, help="exit after this many idle seconds"
    )
    commands.add_parser(
        "ppo-round",
        help="run one PPO round now (also under accelerate launch / torchrun on several GPUs)",
    )
    commands.add_parser(
        "hash-password",
        help="make the operator credential: prints a hash for secrets.toml or the environment",
    )
    commands.add_parser(
        "build-demo",
        help="rebuild the shipped demo model (rlhf_loop/model/demo_shipped) from the default spec",
    )
    demo = commands.add_parser(
        "demo", help="watch the loop learn: the whole loop headless with simulated annotators"
    )
    from rlhf_loop.demo_command import add_demo_arguments

    add_demo_arguments(demo)
    args = parser.parse_args(argv)
    if args.command == "hash-password":
        from rlhf_loop.auth_cli import hash_password_command

        return hash_password_command()
    if args.command == "demo":  # its own fresh data dir and settings: no configuration read
        from rlhf_loop.demo_command import demo_command

        return demo_command(args)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "build-demo":
        from rlhf_loop.model.shipped import build_demo_command

        return build_demo_command(settings)
    if args.command == "ppo-round":
        from rlhf_loop.ppo.cli import run_round_command

        return run_round_command(settings)
    from rlhf_loop.worker import run_worker

    return run_worker(settings, idle_exit_s=args.idle_exit)


if __name__ == "__main__":
    sys.exit(main())
