"""Command line: `gateway serve | check-config | config-schema | token issue | token revoke | keys generate |
import-openapi | demo`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gateway import __version__
from gateway.config.load import ConfigError, load_config, load_metering
from gateway.config.values import address, duration

DEFAULT_CONFIG = "config/gateway.yaml"


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG", DEFAULT_CONFIG),
                        help=f"the gateway's config file (default: $GATEWAY_CONFIG or {DEFAULT_CONFIG})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="Payment-plan gateway")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, help_text in (("serve", "run the gateway"), ("check-config", "validate the config"),
                            ("reload", "make a running gateway re-read its config (SIGHUP to its pid_file)")):
        p = sub.add_parser(name, help=help_text)
        _config_option(p)
        p.add_argument("config_path", nargs="?", metavar="CONFIG", help="same as --config")

    sub.add_parser("config-schema", help="print the JSON Schema (Draft 2020-12) of the config file, for editors")

    token = sub.add_parser("token", help="tokens of the gateway's own issuer").add_subparsers(dest="action", required=True)
    issue = token.add_parser("issue", help="print a JWT signed by tokens.own")
    _config_option(issue)
    issue.add_argument("--service", required=True)
    issue.add_argument("--subscriber", required=True)
    issue.add_argument("--ttl", default=None, help="e.g. 1h, 30d (default: tokens.own.ttl)")
    revoke = token.add_parser("revoke", help="revoke one token (its jti) or every token a subscriber has so far")
    _config_option(revoke)
    revoke.add_argument("jti", nargs="?", help="the token's jti claim")
    revoke.add_argument("--subscriber", help="0xADDR: revoke every token issued to it up to now")

    keys = sub.add_parser("keys", help="signing keys").add_subparsers(dest="action", required=True)
    gen = keys.add_parser("generate", help="write a new PEM signing key")
    gen.add_argument("path")
    gen.add_argument("--type", choices=("ES256", "EdDSA"), default="ES256")

    usage = sub.add_parser("usage", help="ledger: charged, settled, pending credits, shortfalls, burn transactions")
    _config_option(usage)
    usage.add_argument("--service")
    usage.add_argument("--subscriber")

    shortfall = sub.add_parser("shortfall", help="unpaid shortfalls").add_subparsers(dest="action", required=True)
    resolve = shortfall.add_parser("resolve", help="mark a subscriber's shortfall as paid off-chain (unblocks them)")
    _config_option(resolve)
    resolve.add_argument("--service", required=True)
    resolve.add_argument("--subscriber", required=True)
    resolve.add_argument("--note", required=True, help="why it is resolved (kept in the ledger)")

    imp = sub.add_parser("import-openapi", help="protected_endpoints from an OpenAPI 3 document (YAML or JSON)")
    imp.add_argument("source", metavar="URL_OR_FILE")
    imp.add_argument("--service", required=True)
    imp.add_argument("--exclude-method", action="append", default=[], metavar="METHOD")
    imp.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                     help="skip operations whose path (or 'METHOD /path') this regex finds")
    imp.add_argument("--base-path", default=None, help="prefix for every path (default: the first server's path)")
    imp.add_argument("--write", metavar="CONFIG", help="add the rules to this config file in place (comments kept)")

    demo = sub.add_parser("demo", help="local chain + plan + example plugin + gateway, walked through")
    demo.add_argument("--once", action="store_true", help="exit after the walk-through")
    demo.add_argument("--port", type=int, default=0, help="gateway port (default: a free one)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the demo's state folder (signing key, ledger) on exit (default: removed)")

    args = parser.parse_args(argv)
    if getattr(args, "config_path", None):
        args.config = args.config_path
    if args.command == "check-config":
        return _check_config(args.config)
    if args.command == "config-schema":
        import json

        from gateway.config.schema import config_schema

        print(json.dumps(config_schema(), indent=2))
        return 0
    if args.command == "serve":
        return _serve(args.config)
    if args.command == "reload":
        return _reload(args.config)
    if args.command == "token":
        return _token_revoke(args) if args.action == "revoke" else _token_issue(args)
    if args.command == "keys":
        from gateway.auth.issuer import generate_signing_key

        try:
            generate_signing_key(Path(args.path), args.type)
        except FileExistsError:
            print(f"{args.path} exists: a signing key is never overwritten", file=sys.stderr)
            return 1
        except OSError as exc:  # a parent that is a file, a folder we may not write: one line, no traceback
            print(f"cannot write {args.path}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"wrote {args.type} signing key to {args.path}")
        return 0
    if args.command in ("usage", "shortfall"):
        return _ledger_command(args)
    if args.command == "import-openapi":
        return _import_openapi(args)
    if args.command == "demo":
        from gateway.dev.demo import run_demo

        return run_demo(once=args.once, port=args.port, keep=args.keep)
    return 2


def _load(path: str, loader=load_config):
    try:
        return loader(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _check_config(path: str) -> int:
    config = _load(path)
    if config is None:
        return 1
    print(f"{path}: ok ({len(config.services)} service(s): {', '.join(sorted(config.services))})")
    return 0


def _serve(path: str) -> int:
    config = _load(path)
    if config is None:
        return 1
    from gateway.http.client_json import cap_recursion_limit
    from gateway.ops.observability import configure_logging
    from gateway.process.server import serve

    # Why here, after the imports: py_ecc (via eth-account) raised the limit to 100,000 when it was
    # imported, more than the C stack can honour; the workers fork from this process and keep it.
    cap_recursion_limit()
    configure_logging(os.environ.get("GATEWAY_LOG_LEVEL", config.log_level),
                      os.environ.get("GATEWAY_LOG_FORMAT", config.log_format))
    return serve(config)


def _reload(path: str) -> int:
    config = _load(path)
    if config is None:
        return 1  # the running gateway would refuse this file too: say so here, send nothing
    if config.pid_file is None or not config.pid_file.exists():
        print("no pid_file in the config, or no gateway running with it", file=sys.stderr)
        return 1
    from gateway.process.server import signal_reload

    pid = int(config.pid_file.read_text().strip())
    signal_reload(pid)
    print(f"asked gateway {pid} to reload {path}")
    return 0


def _token_issue(args) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    from gateway.auth.issuer import OwnIssuer

    if config.tokens.own is None:
        print("tokens.own is not configured: the gateway has no key to sign with", file=sys.stderr)
        return 1
    service = config.services.get(args.service)
    if service is None:
        print(f"no service {args.service!r} (known: {', '.join(sorted(config.services))})", file=sys.stderr)
        return 1
    try:
        subscriber = address(args.subscriber)
        ttl = duration(args.ttl) if args.ttl else None
    except ValueError as exc:
        print(f"bad argument: {exc}", file=sys.stderr)
        return 1
    issuer = OwnIssuer(config.tokens.own)
    print(issuer.issue(subscriber, [service.id, config.public_url(service)], ttl=ttl))
    return 0


def _token_revoke(args) -> int:
    if (args.jti is None) == (args.subscriber is None):
        print("give either a JTI or --subscriber 0xADDR", file=sys.stderr)
        return 2
    # Why `metering` alone: revoking writes to the database; it needs none of the secrets serving needs.
    metering = _load(args.config, load_metering)
    if metering is None:
        return 1
    from gateway.auth.revocation import revoke_command

    try:
        print(revoke_command(metering, jti=args.jti, subscriber=address(args.subscriber) if args.subscriber else None))
    except ValueError as exc:
        print(f"bad argument: {exc}", file=sys.stderr)
        return 1
    return 0


def _ledger_command(args) -> int:
    from gateway.ops.usage import resolve_shortfall, usage_report

    try:
        subscriber = address(args.subscriber) if args.subscriber else None
    except ValueError as exc:
        print(f"bad argument: {exc}", file=sys.stderr)
        return 1
    if args.command == "usage":
        # Why `metering` alone: reading the ledger needs none of the secrets serving needs.
        metering = _load(args.config, load_metering)
        if metering is None:
            return 1
        print(usage_report(metering, args.service, subscriber))
        return 0
    # Why these parts alone: resolving needs the ledger and the service's plan, not serving's secrets.
    from gateway.config.sections import load_service_plan

    loaded = _load(args.config, lambda path: load_service_plan(path, args.service))
    if loaded is None:
        return 1
    try:
        count = resolve_shortfall(*loaded, subscriber, args.note)
    except ValueError as exc:
        print(f"{args.service}: {exc}", file=sys.stderr)
        return 1
    print(f"resolved {count} shortfall(s) of {subscriber} on {args.service}")
    return 0


def _import_openapi(args) -> int:
    import re

    from gateway.ops import openapi_import as oi

    try:
        for pattern in args.exclude:
            re.compile(pattern)
        document = oi.load_document(args.source)
        for warning in oi.validation_warnings(document):
            print(f"warning: {args.source}: {warning}", file=sys.stderr)
        ops = oi.operations(document, args.exclude_method, args.exclude, args.base_path,
                            warn=lambda w: print(f"warning: {args.source}: {w}", file=sys.stderr))
        oi.check(ops)
        if args.write:
            added, kept = oi.write_config(args.write, args.service, ops)
            print(f"{args.write}: services.{args.service}.protected_endpoints: {added} rule(s) added, "
                  f"{kept} already listed")
            return 0
    except re.error as exc:
        print(f"bad --exclude regex: {exc}", file=sys.stderr)
        return 1
    except oi.ImportProblem as exc:
        print(exc, file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    title = document.get("info", {}).get("title") if isinstance(document.get("info"), dict) else None
    print(oi.render(ops, args.service, args.source, title), end="")
    return 0
