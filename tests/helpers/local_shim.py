"""What the tests of the local shimlet through the in-process server share: the real SmolLM2, short
back-offs, the pids of a service's replicas and whether a process is alive."""

from __future__ import annotations

import os

from tests.conftest import REPO, Live

SMOLLM2 = REPO / ".models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
FAST_LOCAL = {"restart_backoff": 0.2, "restart_backoff_max": 1.0, "probe_interval": 0.1,
              "stop_grace_period": 5.0}


async def replica_pids(live: Live, sid: str) -> list[int]:
    shimlet = await live.server.manager.registry.shimlet("local")
    rec = await live.server.manager.get(sid)
    assert rec.resource_id
    st = await shimlet.status(rec.resource_id)
    return [int(r["pid"]) for r in st.detail.get("replicas", []) if r.get("pid")]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
