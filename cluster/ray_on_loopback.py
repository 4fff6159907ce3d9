"""`ray` (the CLI) for a cluster on one machine that stays on 127.0.0.1: `python cluster/ray_on_loopback.py
start --node-ip-address=127.0.0.1 ...`. Ray replaces a loopback --node-ip-address with the machine's
network address (`ray._private.services.resolve_ip_for_localhost`), so its servers would listen there;
this keeps a 127.x address as given, and Ray's processes then bind to it. Used by local_cluster.sh only."""
import sys

from ray._private import services

_resolve = services.resolve_ip_for_localhost


def keep_loopback(host: str) -> str:
    return host if host.startswith("127.") else _resolve(host)


services.resolve_ip_for_localhost = keep_loopback

from ray.scripts.scripts import main  # noqa: E402  (after the patch, which `ray start` reads at call time)

sys.exit(main())
