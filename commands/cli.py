"""The `modeshift` command: one subcommand per job, each a small function.

    modeshift validate FILE [FILE ...]   exit 0, or 2 with one line per error
    modeshift schema                     the config's JSON Schema, for editors
    modeshift serve -c FILE              the proxy: data plane and admin API, until SIGTERM
                    [--workers N]        N processes sharing the listening socket, under a supervisor
    modeshift demo                       the control core on a real trace with a rush
    modeshift backend --mode M --port N  the reference embedding model server
    modeshift simulate --trace T -c FILE --service MODEL [--policy SPEC ...]
                                         policies compared offline, with baselines and the oracle
    modeshift plan --trace T -c FILE     fleets compared on a trace: static, autoscaled, modeshift, the oracle
    modeshift profile --url URL --out MODEL   a live backend measured into a service model
    modeshift replay --trace T --target URL   a trace sent live with its timing; results as CSV

Subcommands import what they need when they run, so `modeshift validate`
starts without loading the proxy.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK = 0
EXIT_INVALID = 2


def _validate(args: argparse.Namespace) -> int:
    from configs import ConfigError, load_config

    status = EXIT_OK
    for path in args.files:
        try:
            config = load_config(path)
        except ConfigError as exc:
            for line in exc.lines:
                print(line, file=sys.stderr)
            status = EXIT_INVALID
            continue
        print(
            f"{path}: ok ({len(config.lanes)} lanes: {', '.join(config.lanes)}; "
            f"{len(config.modes)} modes, initial {config.initial_mode}; policy {config.policy.type})"
        )
    return status


def _schema(args: argparse.Namespace) -> int:
    from configs import ModeshiftConfig
    from policies.units import schema_defaults_as_text

    schema = schema_defaults_as_text(ModeshiftConfig.model_json_schema(by_alias=True))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "modeshift configuration"
    print(json.dumps(schema, indent=args.indent))
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    if args.workers > 1:
        from router.supervisor import supervise

        return supervise(args.config, args.workers)
    from router.server import serve

    return serve(args.config, shared_socket=args.worker)


def _demo(args: argparse.Namespace) -> int:
    from commands.demo import DemoOptions, Schedule, run_demo

    if args.linger is not None and args.linger < 0:
        print(f"--linger must be 0 or more seconds, got {args.linger:g}", file=sys.stderr)
        return EXIT_INVALID
    options = DemoOptions(config=Path(args.config) if args.config else None, out=Path(args.out), linger_s=args.linger)
    return run_demo(Schedule(speedup=args.speedup, length_s=args.length), options)


def _backend(args: argparse.Namespace) -> int:
    from backends.model_server import serve_backend

    return serve_backend(
        mode=args.mode,
        host=args.host,
        port=args.port,
        model_dir=args.model,
        device=args.device,
        workers=args.workers,
        max_batch=args.max_batch,
        max_wait_s=args.max_wait_ms / 1000.0,
        threads=args.threads,
    )


def _simulate(args: argparse.Namespace) -> int:
    from simulator.command import run

    return run(args)


def _plan(args: argparse.Namespace) -> int:
    from commands.plan import run

    return run(args)


def _profile(args: argparse.Namespace) -> int:
    from commands.profile import run

    return run(args)


def _replay(args: argparse.Namespace) -> int:
    from commands.replay import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modeshift",
        description="Adaptive mode-switching inference router: real-time and batch lanes, switched by policy.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check config files without starting anything")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(run=_validate)

    schema = commands.add_parser("schema", help="print the config's JSON Schema")
    schema.add_argument("--indent", type=int, default=2)
    schema.set_defaults(run=_schema)

    serve = commands.add_parser("serve", help="run the proxy: data plane and admin API")
    serve.add_argument("-c", "--config", required=True, metavar="FILE", help="the YAML config")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N router processes sharing the listening socket, one cluster (needs `cluster:`), under a supervisor",
    )
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one of the supervisor's workers
    serve.set_defaults(run=_serve)

    demo = commands.add_parser("demo", help="replay a real trace with a rush through the default config")
    demo.add_argument("-c", "--config", metavar="FILE", help="the router config (default: configs/default.yaml)")
    demo.add_argument("--speedup", type=float, default=8.0, help="how much faster the rush runs (default 8)")
    demo.add_argument("--length", type=float, default=95.0, help="seconds of the trace to send (default 95)")
    demo.add_argument("--out", default="demo-report", metavar="DIR", help="the report folder (default demo-report)")
    demo.add_argument(
        "--linger",
        type=float,
        metavar="SECONDS",
        help="keep the stack and its status page up this long after the replay (default: until Enter, if a terminal)",
    )
    demo.set_defaults(run=_demo)

    backend = commands.add_parser("backend", help="serve the reference embedding model (OpenAI and KServe v2 APIs)")
    backend.add_argument("--mode", choices=("realtime", "batch"), required=True)
    backend.add_argument("--host", default="127.0.0.1")
    backend.add_argument("--port", type=int, default=8001)
    backend.add_argument("--model", metavar="DIR", help="a sentence-transformers model directory (default: MiniLM)")
    backend.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    backend.add_argument("--workers", type=int, default=1, help="realtime: forward passes at once")
    backend.add_argument("--max-batch", type=int, default=64, help="batch: most texts in one pass")
    backend.add_argument("--max-wait-ms", type=float, default=5.0, help="batch: longest a request waits for company")
    backend.add_argument("--threads", type=int, help="CPU threads per forward pass (default: one per core)")
    backend.set_defaults(run=_backend)

    from simulator.command import add_arguments as simulate_arguments
    from simulator.command import add_trace_arguments as simulate_trace_arguments

    simulate = commands.add_parser("simulate", help="compare policies on a trace, offline, in virtual time")
    simulate_arguments(simulate)
    simulate.set_defaults(run=_simulate)

    from commands.plan import add_arguments as plan_arguments

    plan = commands.add_parser("plan", help="the fleets that could serve a trace: replica-hours, dollars, objectives")
    plan_arguments(plan)
    plan.set_defaults(run=_plan)

    profile = commands.add_parser("profile", help="measure a live backend; write the simulator's service model")
    profile.add_argument("--url", required=True, help="the endpoint, e.g. http://127.0.0.1:8101/v1/embeddings")
    profile.add_argument("--protocol", choices=("openai-embeddings", "openai-chat"), default="openai-embeddings")
    profile.add_argument("--lane", default="realtime", help="the lane name to write the model under")
    profile.add_argument("--out", required=True, metavar="FILE", help="the service model file (lanes are merged in)")
    profile.add_argument("--batch-sizes", default="1,2,4,8,16,32", help="texts per call (chat: max_tokens)")
    profile.add_argument("--lengths", default="4,16,64,128", help="words per text (chat: prompt) in the length sweep")
    profile.add_argument("--concurrency", default="1,2,4,8", help="client counts for the concurrency sweep")
    profile.add_argument("--calls", type=int, default=12, help="calls per batch size and per client")
    profile.add_argument("--model", help="the model name to send in each request (default: none sent)")
    profile.add_argument("--via", metavar="URL", help="the same endpoint through the router: measure its hop too")
    profile.add_argument("--via-lane", help="the lane to pin the calls via the router to (default: --lane)")
    profile.set_defaults(run=_profile)

    replay = commands.add_parser("replay", help="send a trace to a live router with its timing; write the results")
    simulate_trace_arguments(replay, "send this many times faster than the trace")
    replay.add_argument(
        "--target", required=True, help="where default-route requests go, e.g. http://host/v1/embeddings"
    )
    replay.add_argument("--timeout", type=float, default=60.0, help="seconds one request may take")
    replay.add_argument(
        "--protocol",
        choices=("openai-embeddings", "openai-chat"),
        default="openai-embeddings",
        help="embeddings of the trace's inputs, or chat completions asking for its output tokens",
    )
    replay.add_argument("--stream", action="store_true", help="chat: stream the answers; time the first token")
    replay.add_argument("--model", help="the model name to send in each request (default: none sent)")
    replay.add_argument("--out", metavar="FILE", help="per-request CSV, in the simulator's format")
    replay.set_defaults(run=_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
