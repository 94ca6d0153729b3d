"""The ``gateway`` command: serve a config.yaml with uvicorn.

    gateway --config config.yaml [--host 127.0.0.1] [--port 4000] [--workers N] [--log-level info]
            [--access-log] [--log-format text|json] [--log-config logging.yaml]

A broken config prints one line, ``gateway: error: <file>: <key.path>: <problem>``, and
exits with status 2, like a bad command-line argument. Imports are lazy so start-up
stays fast.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config

__all__ = ["main"]

CONFIG_ENV = "GATEWAY_CONFIG"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
_TRACE = 5  # uvicorn's TRACE level number


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 0..65535")
    return port


def _workers(text: str) -> int:
    try:
        workers = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid worker count {text!r}") from None
    if workers < 1:
        raise argparse.ArgumentTypeError("needs at least 1 worker")
    return workers


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Serve your LLM handlers over an OpenAI-compatible HTTP API.",
    )
    parser.add_argument(
        "--config",
        "-c",
        default=os.environ.get(CONFIG_ENV),
        help=f"path to config.yaml (default: ${CONFIG_ENV})",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1; another needs a master_key)",
    )
    parser.add_argument(
        "--port", type=_port, default=4000, help="port to bind, 0 for any free one (default: 4000)"
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="worker processes sharing the port (default: 1)",
    )
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info", help="log level (default: info)"
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per request, after its response (default: off)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text or one JSON object each (default: text)",
    )
    parser.add_argument(
        "--log-config",
        metavar="FILE",
        help="a logging dictConfig in JSON or YAML, used instead of the built-in one",
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    return parser


def _log_config(level: str, fmt: str = "text", access_log: bool = False) -> dict[str, Any]:
    """uvicorn's logging config plus the gateway's loggers, for the parent and every worker."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    number = _TRACE if level == "trace" else level.upper()
    formatter = "gateway.logs.JsonFormatter" if fmt == "json" else "gateway.logs.TextFormatter"
    config["formatters"]["gateway"] = {"()": formatter}
    if fmt == "json":
        for name in ("default", "access"):
            config["formatters"][name] = {"()": formatter}
    config["filters"] = {"request_id": {"()": "gateway.logs.RequestIdFilter"}}
    config["handlers"]["gateway"] = {
        "formatter": "gateway",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "filters": ["request_id"],
    }
    config["handlers"]["gateway.access"] = {
        "formatter": "gateway",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stdout",
        "filters": ["request_id"],
    }
    config["loggers"]["gateway"] = {"handlers": ["gateway"], "level": number, "propagate": False}
    config["loggers"]["gateway.access"] = {
        "handlers": ["gateway.access"],
        "level": "INFO" if access_log else "WARNING",
        "propagate": False,
    }
    # The CLI prints config warnings itself, once; workers reload the config and would
    # repeat them.
    quiet = number if level in ("debug", "trace") else "ERROR"
    config["loggers"]["gateway.config"] = {"level": quiet}
    return config


class _LogConfigError(Exception):
    pass


def _read_log_config(path: str, access_log: bool) -> dict[str, Any]:
    """A dictConfig from a JSON or YAML file (as uvicorn's ``--log-config``); the access
    log is on if ``--access-log`` says so, else as the file configures it (off if not)."""
    import json

    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
        if path.endswith(".json"):
            config = json.loads(text)
        elif path.endswith((".yaml", ".yml")):
            import yaml

            config = yaml.safe_load(text)
        else:
            raise _LogConfigError("must be a .json, .yaml or .yml file")
    except (OSError, ValueError) as exc:
        raise _LogConfigError(str(exc)) from None
    except Exception as exc:  # yaml.YAMLError
        raise _LogConfigError(str(exc).replace("\n", " ")) from None
    if not isinstance(config, dict) or "version" not in config:
        raise _LogConfigError("must be a logging dictConfig (a mapping with a `version`)")
    loggers = config.setdefault("loggers", {})
    if access_log:
        loggers.setdefault("gateway.access", {})["level"] = "INFO"
    else:
        loggers.setdefault("gateway.access", {"level": "WARNING"})
    return config


def _say(line: str) -> None:
    print(f"gateway: {line}", flush=True)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _banner(config: Config) -> None:
    for warning in config.warnings:
        _say(f"warning: {warning}")
    names = config.model_names
    if names:
        _say(f"serving {len(names)} model{'s' * (len(names) != 1)}: {', '.join(names)}")
    else:
        _say("serving no models (model_list is empty)")


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _check_exposure(config: Config, host: str, source: str) -> str | None:
    """Why the gateway must not start keyless on ``host``, or None."""
    if config.master_key is not None or _is_loopback(host):
        return None
    if config.allow_unauthenticated:
        _say(
            f"warning: no master_key and listening on {host}: anyone who can reach it "
            "can spend your backends (general_settings.allow_unauthenticated is true)"
        )
        return None
    return (
        f"{source}: general_settings.master_key: required to listen on {host}, which is not "
        "a loopback address (set a master_key, listen on 127.0.0.1, or set "
        "general_settings.allow_unauthenticated: true)"
    )


def _fail(message: str) -> int:
    print(f"gateway: error: {message}", file=sys.stderr, flush=True)
    return 2


def _note(line: str) -> None:
    print(f"gateway: note: {line}", file=sys.stderr, flush=True)


def _implementations() -> tuple[str, str]:
    """uvloop and httptools when installed (both are optional speed-ups), else asyncio's
    own loop and h11, with a note."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        loop = "asyncio"
        _note("uvloop is not installed: using asyncio's event loop (slower)")
    else:
        loop = "uvloop"
    try:
        import httptools  # noqa: F401
    except ImportError:
        http = "h11"
        _note("httptools is not installed: parsing HTTP with h11 (slower)")
    else:
        http = "httptools"
    return loop, http


def _file_limit(config: Config) -> None:
    """Raise the open-files limit to what the connection caps need, as far as allowed."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    from ._server import RESERVE

    settings = config.settings
    need = settings.max_connections + RESERVE + settings.upstream.max_connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
        if soft < need:
            _say(
                f"warning: the open-files limit ({soft}) is below what max_connections and "
                f"upstream.max_connections need ({need}); lower them or raise the limit"
            )


def _uvicorn_options(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    from ._server import Limits, protocol_factory

    settings = config.settings
    loop, http = _implementations()
    limits = Limits(
        max_url_bytes=settings.max_url_bytes,
        max_header_bytes=settings.max_header_bytes,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        max_connections=settings.max_connections,
    )
    return {
        "host": args.host,
        "port": args.port,
        "loop": loop,
        "http": protocol_factory(http, limits),
        "timeout_keep_alive": settings.keepalive_timeout,
        "lifespan": "on",
        "access_log": False,
        "log_level": args.log_level,
        "log_config": args.logging,
        "timeout_graceful_shutdown": settings.graceful_timeout,
    }


def _serve_one(app: Any, options: dict[str, Any], workers: int) -> int:
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if not self.started:
                return
            # The address really bound (--port 0 picks a free port).
            host, port = options["host"], options["port"]
            for server in getattr(self, "servers", ()):
                for sock in server.sockets or ():
                    port = sock.getsockname()[1]
                    break
            _say(f"listening on {_url(host, port)} ({workers} worker, pid {os.getpid()})")

    server = Server(uvicorn.Config(app, **options))
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to whatever
    # handler was there before; a no-op one makes a clean stop exit with status 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0 if server.started else 3


def _serve_many(path: str, options: dict[str, Any], workers: int) -> int:
    import uvicorn

    # Workers are new processes: each builds its own app from the config path.
    os.environ[CONFIG_ENV] = path
    _say(f"listening on {_url(options['host'], options['port'])} ({workers} workers)")
    import shutil
    import tempfile

    from .metrics import METRICS_DIR_ENV

    # Each worker writes its metrics here for the others: a scrape of any one is whole.
    folder = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ[METRICS_DIR_ENV] = folder
    try:
        uvicorn.run("gateway.app:app_from_env", factory=True, workers=workers, **options)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the gateway; returns the exit status (2 for a broken config)."""
    args = _parser().parse_args(argv)
    if not args.config:
        _parser().error(f"the following arguments are required: --config (or ${CONFIG_ENV})")
    if args.workers > 1 and args.port == 0:
        _parser().error("--port 0 works only with --workers 1")

    import logging.config

    from .config import ConfigError, load_config

    if args.log_config:
        try:
            args.logging = _read_log_config(args.log_config, args.access_log)
            logging.config.dictConfig(args.logging)
        except (_LogConfigError, ValueError, TypeError, AttributeError, ImportError) as exc:
            return _fail(f"{args.log_config}: {exc}")
    else:
        args.logging = _log_config(args.log_level, args.log_format, args.access_log)
        logging.config.dictConfig(args.logging)
    try:
        config = load_config(args.config)
        from .app import create_app

        # Built here even with several workers: errors the app finds in the config
        # (router settings, ...) fail now, once, instead of in every worker.
        app = create_app(config)
        app.own_process()
    except ConfigError as exc:
        return _fail(str(exc))
    if app.runtime.unavailable:
        # A mounted app serves the other models (and is unready); a server does not start.
        deployment, why = app.runtime.unavailable[0]
        return _fail(f"{args.config}: model_list: deployment {deployment}: {why}")
    if config.database_url:
        # Once, here, before any worker starts: a database that is down (or a schema
        # newer than us) is a clear start-up error, and workers find it migrated.
        import asyncio

        from .keys import StoreError, check_database

        try:
            asyncio.run(check_database(config))
        except StoreError as exc:
            return _fail(f"general_settings.database_url: {exc}")
    exposed = _check_exposure(config, args.host, args.config)
    if exposed is not None:
        return _fail(exposed)
    _banner(config)
    _file_limit(config)
    options = _uvicorn_options(args, config)
    if args.workers > 1:
        return _serve_many(config.path or os.path.abspath(args.config), options, args.workers)
    return _serve_one(app, options, args.workers)
