"""`phenaki submit`: run a phenaki job on a Ray cluster through the Ray Jobs API (`JobSubmissionClient`).

    phenaki submit [OPTIONS] JOB [JOB_ARGS...]
    phenaki submit JOB [OPTIONS] -- JOB_ARGS...

JOB is a `phenaki` subcommand (`train-transformer`) or a module (`jobs.train_transformer`); the job runs on the
cluster as `python -m jobs.<module> JOB_ARGS...` in an uploaded copy of --working-dir (default: this checkout,
without .venv/.git/outputs). Everything after JOB belongs to the job, unless a `--` follows JOB: then the options
between JOB and `--` are submit's and everything after `--` is the job's.

Prints the submission id, then streams the job's logs until it ends; exits 0 when the job SUCCEEDED, 1 otherwise.
Ctrl-C stops following the logs only (the job keeps running: `ray job stop ID`). Since Ray 2.59 a local cluster
has token authentication on by default (`ray start --head` whenever a token exists, `ray.init()` always); the token
is sent as `Authorization: Bearer` from --token, $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (where
the head keeps it; `ray get-auth-token` prints it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from jobs.runtime import WORKER_ENV, DropMessages, key_value_pairs

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
REPO_ROOT = Path(__file__).resolve().parents[1]

# Never uploaded: environments, VCS, caches, and outputs (shards, checkpoints) that belong on shared storage.
# Ray also honours .gitignore/.rayignore; these hold when the working dir is not this checkout.
DEFAULT_EXCLUDES = [
    ".venv",
    "venv",
    ".git",
    "__pycache__",
    "*.pyc",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    ".whl",
    "demo-out",
    "runs",
    "*.tar",
    "*.tar.gz",
    "*.safetensors",
    "*.pt",
]


def default_working_dir() -> Path:
    """This checkout; the current directory when phenaki is installed as a package (never site-packages)."""
    return REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()


AUTH_HELP = (
    "pass the cluster's token with --token TOKEN or RAY_AUTH_TOKEN=TOKEN (on the head: `ray get-auth-token`; "
    "it lives in ~/.ray/auth_token there), or set RAY_AUTH_TOKEN_PATH to a file holding it"
)


def job_module(job: str) -> str:
    """`train-transformer`, `train_transformer` or `jobs.train_transformer` -> `jobs.train_transformer`."""
    from jobs.cli import SUBCOMMANDS

    known = {name: module for name, (module, _) in SUBCOMMANDS.items() if module != "jobs.submit"}
    if job in known:
        return known[job]
    module = job if job.startswith("jobs.") else f"jobs.{job.replace('-', '_')}"
    if module in known.values():
        return module
    # A job module not (yet) registered as a subcommand: jobs.<name>, spelled out.
    if (
        job.startswith("jobs.")
        and all(part.isidentifier() for part in job.split("."))
        and job != "jobs.submit"
    ):
        return job
    raise ValueError(
        f"unknown job {job!r}: use a phenaki subcommand ({', '.join(known)}) or a module jobs.<name>"
    )


def build_entrypoint(job: str, args: list[str] | tuple[str, ...] = (), python: str = "python") -> str:
    """The shell command the cluster runs: `python -m jobs.<module> <args>`, every argument shell-quoted."""
    return shlex.join([python, "-m", job_module(job), *args])


def read_requirements(path: str | os.PathLike) -> list[str]:
    """A requirements file as a pip list (comments and blank lines dropped)."""
    lines = []
    for raw in Path(path).read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def parse_env(pairs: list[str] | None) -> dict[str, str]:
    return key_value_pairs(pairs, "--env")


def build_runtime_env(
    working_dir: str | os.PathLike | None = None,
    *,
    requirements: str | os.PathLike | None = None,
    pip: list[str] | None = None,
    env: dict[str, str] | None = None,
    excludes: list[str] | None = None,
) -> dict:
    """The job's runtime_env: uploaded working_dir (minus DEFAULT_EXCLUDES + `excludes`), pip packages, and
    env_vars = WORKER_ENV overridden by `env`."""
    runtime_env: dict = {}
    if working_dir is not None:
        path = Path(working_dir).expanduser().resolve()
        if not path.is_dir():
            raise ValueError(f"--working-dir {working_dir} is not a directory")
        runtime_env["working_dir"] = str(path)
        runtime_env["excludes"] = list(dict.fromkeys([*DEFAULT_EXCLUDES, *(excludes or [])]))
    packages = read_requirements(requirements) if requirements else list(pip or [])
    if packages:
        runtime_env["pip"] = packages
    runtime_env["env_vars"] = {**WORKER_ENV, **(env or {})}
    return runtime_env


def resolve_token(explicit: str | None = None) -> tuple[str | None, str]:
    """The token to send and where it came from: --token, $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token
    (Ray's own precedence after an explicit flag)."""
    if explicit:
        return explicit.strip(), "--token"
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "$RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        if not path.is_file() or not path.read_text().strip():
            raise ValueError(f"RAY_AUTH_TOKEN_PATH={path} is missing or empty")
        return path.read_text().strip(), str(path)
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file() and default.read_text().strip():
        return default.read_text().strip(), str(default)
    return None, "no token"


def normalize_address(address: str | None) -> str:
    address = (address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS).strip().rstrip("/")
    if "://" not in address and address != "auto":
        address = f"http://{address}"
    return address


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help=f"Ray dashboard (Jobs API) URL (default: $RAY_ADDRESS or {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--working-dir",
        default=None,
        help="directory uploaded as the job's working dir (default: this checkout, minus .venv/.git/outputs)",
    )
    deps = parser.add_mutually_exclusive_group()
    deps.add_argument("--requirements", default=None, help="requirements file pip-installed for the job")
    deps.add_argument(
        "--pip", action="append", default=None, metavar="PKG", help="pip package for the job (repeat)"
    )
    parser.add_argument(
        "--env", action="append", default=None, metavar="KEY=VALUE", help="job env var (repeat)"
    )
    parser.add_argument(
        "--excludes",
        action="append",
        default=None,
        metavar="GLOB",
        help="extra gitignore-style pattern not uploaded (repeat)",
    )
    parser.add_argument(
        "--submission-id", default=None, help="submission id (default: Ray picks raysubmit_...)"
    )
    parser.add_argument("--no-wait", action="store_true", help="print the submission id and return")
    parser.add_argument(
        "--token",
        default=None,
        help="Ray auth token (default: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)",
    )
    parser.add_argument("--python", default="python", help="interpreter on the cluster (default: python)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.allow_abbrev = False  # `--out` of a job must never abbreviate a submit option
    _add_options(parser)
    parser.add_argument(
        "job", metavar="JOB", help="phenaki subcommand (train-transformer) or module (jobs.x)"
    )
    parser.add_argument("job_args", nargs=argparse.REMAINDER, metavar="JOB_ARGS", help="arguments of the job")


def split_job_args(args: argparse.Namespace) -> argparse.Namespace:
    """Moves submit options written between JOB and `--` into `args`; leaves the job its own arguments."""
    job_args = list(args.job_args)
    if "--" not in job_args:
        return args
    cut = job_args.index("--")
    options, args.job_args = job_args[:cut], job_args[cut + 1 :]
    if options:
        parser = argparse.ArgumentParser(
            prog="phenaki submit JOB", allow_abbrev=False, argument_default=argparse.SUPPRESS
        )
        _add_options(parser)
        parser.parse_args(options, namespace=args)
    return args


class SubmitError(Exception):
    """A failure with a message for the user (no traceback)."""


def _auth_message(address: str, status: int | None, token_source: str) -> str:
    if status == 401 or token_source == "no token":
        return f"{address} requires a Ray auth token and none was sent ({token_source}): {AUTH_HELP}"
    return (
        f"{address} rejected the auth token from {token_source} (wrong cluster or stale token): {AUTH_HELP}"
    )


def connect(address: str, token: str | None, token_source: str):
    """A JobSubmissionClient, or SubmitError saying how to start a head or pass the token."""
    import requests
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as e:
        status = 401 if str(getattr(e, "message", e)).startswith("Authentication required") else 403
        raise SubmitError(_auth_message(address, status, token_source)) from e
    except (ConnectionError, requests.exceptions.ConnectionError) as e:
        raise SubmitError(
            f"cannot reach a Ray dashboard at {address}: start a head with `ray start --head` "
            f"(Jobs API on port 8265), or pass --address http://HEAD:8265 / set RAY_ADDRESS"
        ) from e


async def _tail(client, submission_id: str) -> None:
    async for lines in client.tail_job_logs(submission_id):
        print(lines, end="", flush=True)


def wait_for_end(client, submission_id: str, timeout_s: float | None = 60.0):
    """The job's JobInfo once terminal (the log stream can close a moment before the status turns terminal);
    after `timeout_s` (None: no limit) whatever it is then."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    info = client.get_job_info(submission_id)
    while not info.status.is_terminal() and (deadline is None or time.monotonic() < deadline):
        time.sleep(1.0)
        info = client.get_job_info(submission_id)
    return info


def ray_job_hint(token_source: str) -> str:
    """What `ray job ...` needs in front to send the same token (it sends one only in RAY_AUTH_MODE=token)."""
    if token_source == "no token":
        return ""
    if token_source == "--token":
        return "RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<token> "
    return "RAY_AUTH_MODE=token "


# What Ray's job client logs on every healthy submission that is not news to the user: a warning that .git and
# .venv are not uploaded (DEFAULT_EXCLUDES leaves them out anyway) and the log stream's normal close.
CLIENT_NOISE = (
    "Directory '.git' is now ignored",
    "Directory '.venv' is now ignored",
    "WebSocket closed for job",
)


def quiet_client_noise() -> None:
    """Drop `CLIENT_NOISE` at Ray's log handlers (Ray's helpers log through their callers' loggers, so a filter
    on one logger misses them) and Ray's per-file INFO lines while packaging the working dir (the upload line,
    at the dashboard SDK's logger, stays)."""
    logging.getLogger("ray._private.runtime_env.packaging").setLevel(logging.WARNING)
    for handler in logging.getLogger("ray").handlers:
        if not any(isinstance(f, DropMessages) for f in handler.filters):
            handler.addFilter(DropMessages(CLIENT_NOISE))


def submit(args: argparse.Namespace) -> int:
    address = normalize_address(args.address)
    entrypoint = build_entrypoint(args.job, args.job_args, python=args.python)
    runtime_env = build_runtime_env(
        args.working_dir or default_working_dir(),
        requirements=args.requirements,
        pip=args.pip,
        env=parse_env(args.env),
        excludes=args.excludes,
    )
    token, token_source = resolve_token(args.token)
    client = connect(address, token, token_source)
    quiet_client_noise()  # after connect: importing Ray's client sets up the handlers it filters
    submission_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env=runtime_env,
        submission_id=args.submission_id,
        metadata={"job": args.job, "submitted_by": "phenaki submit"},
    )
    print(f"submission id: {submission_id}", flush=True)
    print(f"entrypoint: {entrypoint}", flush=True)
    prefix = ray_job_hint(token_source)
    follow = f"{prefix}ray job logs {submission_id} --address {address} --follow"
    stop = f"{prefix}ray job stop {submission_id} --address {address}"
    if args.no_wait:
        print(f"follow: {follow}\nstop:   {stop}", flush=True)
        return 0
    print(f"--- logs of {submission_id} (Ctrl-C stops following; the job keeps running) ---", flush=True)
    try:
        timeout_s = 60.0
        try:
            asyncio.run(_tail(client, submission_id))
        except Exception as e:  # the stream can drop (head restart, proxy timeout): the status still decides
            print(f"log stream ended early ({e}); waiting for the job to end", file=sys.stderr, flush=True)
            timeout_s = None
        info = wait_for_end(client, submission_id, timeout_s=timeout_s)
    except KeyboardInterrupt:
        print(
            f"\nstopped following {submission_id}; the job keeps running.\n  follow again: {follow}\n"
            f"  stop it:      {stop}",
            file=sys.stderr,
            flush=True,
        )
        return 130
    if info.message:  # a failed job's message repeats the log tail just streamed: keep its first sentence
        print(f"status message: {info.message.splitlines()[0].split(', last available logs')[0]}", flush=True)
    print(f"--- job {submission_id} {info.status} ---", flush=True)
    return 0 if str(info.status) == "SUCCEEDED" else 1


def main(args: argparse.Namespace) -> int:
    try:
        return submit(split_job_args(args))
    except ValueError as e:  # bad arguments
        print(f"phenaki submit: error: {e}", file=sys.stderr, flush=True)
        return 2
    except (
        SubmitError,
        RuntimeError,
    ) as e:  # RuntimeError: the Jobs API refused (duplicate id, bad runtime_env)
        print(f"phenaki submit: error: {e}", file=sys.stderr, flush=True)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.submit", allow_abbrev=False)
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    raise SystemExit(main(build_parser().parse_args()))
