"""`phenaki serve`: the sampler as an HTTP service on Ray Serve (the app: `jobs.serving`; the API:
`jobs/serving/gateway.py` and docs/serving.md).

    phenaki serve --checkpoint RUN/transformer [--port 8000] [--max-replicas 2] [--api-keys-file keys.txt]

Every flag is a field of `jobs.serving.app.ServeArgs` (the limits too: `--max-steps`, `--max-batch`, ...), which
a Serve config file holds under `args` for `serve deploy` (infra/serve/phenaki.yaml). Ctrl-C or SIGTERM stops.
"""

from __future__ import annotations

import argparse
import json
import signal
import time

from jobs.runtime import log, run_command
from jobs.serving.api import Limits
from jobs.serving.app import ServeArgs, start, stop

EXAMPLE_REQUESTS = {
    "phenaki": {"prompts": ["a red circle moving left"], "seed": 0},
    "commit": {"task": "fp", "video_b64": "<base64 of input.mp4>", "seed": 0},
}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# ServeArgs fields that are flags of their own (the limits are a group of flags too)
SERVE_FLAGS = ("min_replicas", "max_replicas", "num_cpus", "num_gpus", "upscale_delay_s", "downscale_delay_s",
               "api_keys_file")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    fields = ServeArgs.model_fields
    parser.add_argument("--checkpoint", required=True, help=fields["checkpoint"].description)
    parser.add_argument("--host", default="127.0.0.1", help="HTTP host (0.0.0.0 to listen on all interfaces)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)"
    )
    for name in SERVE_FLAGS:
        field = fields[name]
        kind = {int: int, float: float}.get(field.annotation, str)
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=kind, default=field.default, help=field.description
        )
    limits = parser.add_argument_group("limits (jobs.serving.api.Limits)")
    for name, field in Limits.model_fields.items():
        limits.add_argument(
            f"--{name.replace('_', '-')}",
            type=field.annotation,
            default=field.default,
            help=field.description,
        )


def args_from(ns: argparse.Namespace) -> ServeArgs:
    limits = Limits(**{name: getattr(ns, name) for name in Limits.model_fields})
    return ServeArgs(
        checkpoint=ns.checkpoint, limits=limits, device="cuda" if ns.num_gpus > 0 else None,
        **{name: getattr(ns, name) for name in SERVE_FLAGS},
    )  # fmt: skip


def main(ns: argparse.Namespace) -> int:
    from modeling.generators import generator_class, generator_kind

    args = args_from(ns)  # validated before Ray starts
    if ns.host not in LOOPBACK and not args.api_keys_file:
        log.warning(
            "listening on %s with no API keys: anyone who can reach it can generate (--api-keys-file)",
            ns.host,
        )
    url = start(args, host=ns.host, port=ns.port, address=ns.address)
    kind = generator_kind(args.checkpoint)
    family = "commit" if kind == "commit" else "phenaki"
    print(f"{generator_class(kind).title} is serving at {url}/  (open it in a browser; Ctrl-C stops)")
    print(f"  API docs: {url}/docs")
    print(
        f"  curl -s -X POST {url}/v1/videos/sync -H 'Content-Type: application/json' "
        f"-d '{json.dumps(EXAMPLE_REQUESTS[family])}' -o video.mp4 -D -"
    )

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `kill`, `ray job stop`, container shutdown: stop cleanly too
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a shell
        signal.signal(signal.SIGINT, interrupt)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.serve", description=__doc__, allow_abbrev=False)
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    raise SystemExit(run_command("python -m jobs.serve", main, build_parser().parse_args()))
