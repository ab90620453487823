"""``pagedserve-operator``: run the InferenceService controller (kopf) from the command line."""
from __future__ import annotations

import argparse
import logging
import sys

import kopf

from . import __version__
from .config import CONFIG

log = logging.getLogger('pagedserve_operator')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='pagedserve-operator',
        description='Reconcile pagedserve.io/v1alpha1 InferenceServices into runtime Deployments, Services, '
                    'HPAs, PDBs and Ingresses.')
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument('-n', '--namespace', action='append', dest='namespaces', metavar='NS',
                       help='watch this namespace (repeatable; globs as in kopf, e.g. "team-*")')
    scope.add_argument('-A', '--all-namespaces', action='store_true', help='watch every namespace')
    parser.add_argument('--liveness', default='http://0.0.0.0:8080/healthz', metavar='URL',
                        help='liveness endpoint served by the operator (default %(default)s; "" disables it)')
    parser.add_argument('--runtime-image', default=CONFIG.runtime_image,
                        help='runtime image when a CR sets none (env PAGEDSERVE_RUNTIME_IMAGE; default %(default)s)')
    parser.add_argument('--resync-seconds', type=float, default=CONFIG.resync_seconds,
                        help='re-check every InferenceService this often (env PAGEDSERVE_RESYNC_SECONDS; '
                             'default %(default)s)')
    parser.add_argument('--progress-seconds', type=float, default=CONFIG.progress_seconds,
                        help='re-check InferenceServices that are not Ready this often (env PAGEDSERVE_PROGRESS_SECONDS; '
                             'default %(default)s)')
    parser.add_argument('--pod-health-timeout', type=float, default=CONFIG.pod_health_timeout,
                        help='timeout of GET http://<podIP>:<port>/health on starting runtime pods, for the '
                             'Downloading/Loading status; 0 disables it (env PAGEDSERVE_POD_HEALTH_TIMEOUT; '
                             'default %(default)s)')
    parser.add_argument('--log-format', choices=['json', 'plain', 'full'], default='json',
                        help='log format (default %(default)s: one JSON object per line)')
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    parser.add_argument('--peering', metavar='NAME',
                        help='kopf peering name, for several operator replicas (needs kopf\'s peering CRDs); '
                             'default: standalone, run one replica')
    parser.add_argument('--version', action='version', version=f'pagedserve-operator {__version__}')
    args = parser.parse_args(argv)
    if args.resync_seconds <= 0:
        parser.error('--resync-seconds must be positive')
    if args.progress_seconds <= 0:
        parser.error('--progress-seconds must be positive')
    if args.pod_health_timeout < 0:
        parser.error('--pod-health-timeout must be >= 0')
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pagedserve-operator`` console script."""
    args = parse_args(argv)
    CONFIG.runtime_image = args.runtime_image
    CONFIG.resync_seconds = args.resync_seconds
    CONFIG.progress_seconds = args.progress_seconds
    CONFIG.pod_health_timeout = args.pod_health_timeout
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat[args.log_format.upper()])
    log.info('pagedserve-operator %s starting: %s, runtime image %s', __version__,
             'all namespaces' if args.all_namespaces else 'namespaces ' + ', '.join(args.namespaces),
             CONFIG.runtime_image)
    kopf.run(
        clusterwide=args.all_namespaces,
        namespaces=tuple(args.namespaces or ()),
        liveness_endpoint=args.liveness or None,
        standalone=args.peering is None,
        peering_name=args.peering,
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
