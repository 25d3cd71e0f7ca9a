"""The client's membership view rules (``mesh/client/view.py``), without sockets: which record
wins, a node whose port refused this client is suspect until heard again, the no-agent message,
and the version-skew warning given once per (node, version). The probe itself
(``mesh/client/reach.py``) is tested on real ports in ``tests/integration/test_no_agents.py``."""

from __future__ import annotations

import warnings

from mesh.client.view import MeshVersionWarning, VersionWatch, build_view, newer, nobody_listens
from mesh.config import MeshSettings
from mesh.membership import ALIVE, SUSPECT


def _rec(node: str, incarnation: int = 1, age_s: float = 0.2, version: str = "1.0") -> dict:
    return {"node": node, "address": f"tcp://127.0.0.1:{7000 + int(node[-1])}", "state": ALIVE,
            "incarnation": incarnation, "capacity": 100, "used": 0, "host_available": 1000,
            "blocks": 0, "age_s": age_s, "version": version}


def test_the_later_incarnation_then_the_fresher_heartbeat_wins():
    assert newer(_rec("n1"), None)
    assert newer(_rec("n1", incarnation=2, age_s=5.0), _rec("n1", incarnation=1, age_s=0.1))
    assert newer(_rec("n1", age_s=0.1), _rec("n1", age_s=0.5))
    assert not newer(_rec("n1", age_s=0.5), _rec("n1", age_s=0.1))


def test_a_node_whose_port_refused_after_its_last_heartbeat_is_suspect():
    now = 100.0
    merged = {"n1": _rec("n1", age_s=0.5), "n2": _rec("n2", age_s=0.5)}
    refused = {merged["n1"]["address"]: ("refused the connection", now - 0.1)}
    view = build_view(merged, {}, 0.0, MeshSettings(), None, refused, now)
    assert view["n1"].state == SUSPECT and view["n2"].state == ALIVE
    # heard again after the refusal (a restarted agent): alive
    refused = {merged["n1"]["address"]: ("refused the connection", now - 2.0)}
    assert build_view(merged, {}, 0.0, MeshSettings(), None, refused, now)["n1"].state == ALIVE


def test_the_no_agent_message_names_every_node_in_order_grouped_by_reason():
    err = nobody_listens([("tcp://a:1", "n1", "refused the connection"),
                          ("tcp://b:1", None, "is unreachable (No route to host)"),
                          ("tcp://c:1", "n3", "refused the connection")])
    assert str(err) == (
        "no mesh agent answered: n1 (tcp://a:1), n3 (tcp://c:1) refused the connection; "
        "tcp://b:1 is unreachable (No route to host); start them with `grid agents start`")


def test_version_skew_warns_once_per_node_and_version():
    watch = VersionWatch("1.0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [watch.check("n1", "1.0"), watch.check("n2", "0.9"), watch.check("n2", "0.9"),
                   watch.check("n2", "1.1"), watch.check("n3", "")]
    assert results == [False, True, False, True, False]
    assert [w.category for w in caught] == [MeshVersionWarning] * 2
    assert "node n2 runs mesh 0.9, this client runs 1.0" in str(caught[0].message)
