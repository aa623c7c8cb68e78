"""Who holds a run's records: lease owners, and whether the process behind one is still alive.

A worker leases pending records under an owner id ``host:pid:nonce`` for :data:`LEASE_TTL_S`
seconds and renews the lease while it works. A lease whose owner is a dead process on this host
(kill -9, crash) is given back to the queue at once, without waiting for it to expire.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

from corral.store.base import RunInfo, Store

#: the environment variable that sets :data:`LEASE_TTL_S` (seconds)
LEASE_TTL_ENV = "CORRAL_LEASE_TTL"


def _lease_ttl() -> float:
    raw = os.environ.get(LEASE_TTL_ENV, "").strip()
    try:
        ttl = float(raw) if raw else 300.0
    except ValueError:
        ttl = 300.0
    return ttl if ttl > 0 else 300.0


#: how long a lease holds without being renewed (a worker renews it every quarter of this): how
#: long a worker that stalls (a stopped process, a machine cut off) keeps its rows from the others;
#: $CORRAL_LEASE_TTL sets it (default 300 s)
LEASE_TTL_S = _lease_ttl()
HOST = socket.gethostname()


def new_owner_id() -> str:
    """A fresh owner id for one worker's pass over a run: ``host:pid:nonce``."""
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_dead(owner: str) -> bool:
    """Whether ``owner``'s process is known to be gone: on this host and not running, or this
    very process (an earlier run in it that did not finish). An owner on another host is alive."""
    host, _, rest = owner.partition(":")
    pid_s, _, _ = rest.partition(":")
    if host != HOST or not pid_s.isdigit():
        return False
    pid = int(pid_s)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def other_owners(store: Store, run_id: str, me: str) -> list[str]:
    """Live workers other than ``me`` that hold leases on the run."""
    return sorted(o for o in store.lease_owners(run_id) if o != me and not owner_dead(o))


def live_status(store: Store, run: RunInfo) -> str:
    """The run's status, with a run whose process died (kill -9, crash) shown as interrupted."""
    if run.status not in ("created", "ingesting", "running"):
        return run.status
    owners = store.lease_owners(run.id)
    if owners and not all(owner_dead(o) for o in owners):
        return "running"
    if run.status in ("created", "ingesting") and time.time() - run.updated_at < 60:
        return "running"  # still loading rows (each loaded chunk touches the run)
    return "interrupted"
