"""``ledger-healthcheck --config PATH``: is this node serving? Exit 0 if so, 1 if not, 2 on a bad
config. For container probes: Kubernetes' own gRPC probe speaks plaintext only, and the node's
ports are TLS. It dials the node's own API port on this host, trusting its bank's CA from
genesis and expecting the member id as the certificate's name, and asks gRPC health.

  --service ledger.v1.LedgerService   readiness: SERVING only while the node takes new work
                                      (a quorum of peer links, and the store within its budget)
  --any-status                        liveness: any health answer at all (the process is alive
                                      and its loop turns), whatever it says
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger import tls
from ledger.genesis import GenesisError, load_genesis
from node.config import ConfigError, load_node_config

EXIT_SERVING, EXIT_NOT_SERVING, EXIT_CONFIG = 0, 1, 2
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ledger-healthcheck", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True, help="the node's config JSON")
    parser.add_argument("--service", default="", help="the health service to ask (default: the whole node)")
    parser.add_argument("--any-status", action="store_true", help="exit 0 on any answer (liveness)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)
    try:
        config = load_node_config(args.config)
        genesis = load_genesis(config.genesis_path)
    except (ConfigError, GenesisError) as exc:
        print(f"ledger-healthcheck: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    member = genesis.member(config.member_id)
    if member is None:
        print(f"ledger-healthcheck: {config.member_id} is not in genesis", file=sys.stderr)
        return EXIT_CONFIG
    host, _, port = config.api_listen.rpartition(":")
    target = f"{'127.0.0.1' if host in _WILDCARD_HOSTS else host}:{port}"
    if config.tls:
        try:
            roots = tls.member_ca(member)
        except tls.TlsError as exc:
            print(f"ledger-healthcheck: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        creds = grpc.ssl_channel_credentials(root_certificates=roots)
        channel = grpc.secure_channel(
            target, creds, options=[("grpc.ssl_target_name_override", member.member_id)]
        )
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"ledger-healthcheck: {target}: {exc.code().name} {exc.details()}", file=sys.stderr)
            return EXIT_NOT_SERVING
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    if args.any_status or resp.status == health_pb2.HealthCheckResponse.SERVING:
        print(f"{config.member_id} {target} {args.service or '(node)'}: {status}")
        return EXIT_SERVING
    print(
        f"ledger-healthcheck: {config.member_id} {target} {args.service or '(node)'}: {status}",
        file=sys.stderr,
    )
    return EXIT_NOT_SERVING


if __name__ == "__main__":
    sys.exit(main())
