"""The hospital network for the overview: node positions, per-node and per-link traffic tables."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from app.review import site_order


def circle_layout(nodes: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Nodes evenly on the unit circle, the first at the top, clockwise."""
    n = max(len(nodes), 1)
    return {
        node: (math.sin(2 * math.pi * i / n), math.cos(2 * math.pi * i / n))
        for i, node in enumerate(nodes)
    }


def _traffic(exchanges: pd.DataFrame, method: str) -> pd.DataFrame:
    frame = exchanges[exchanges["method"] == method]
    return frame if not frame.empty else exchanges.iloc[0:0]


def node_table(
    nodes: Sequence[str],
    *,
    method: str,
    status: pd.DataFrame,
    exchanges: pd.DataFrame,
    sites: pd.DataFrame,
) -> pd.DataFrame:
    """One row per hospital: position, state, last step, training size, traffic totals."""
    layout = circle_layout(nodes)
    traffic = _traffic(exchanges, method)
    state = status[status["method"] == method].set_index("site")
    n_train = dict(zip(sites["site"], sites["n_train"], strict=True))
    rows = []
    for node in nodes:
        sent = traffic[traffic["src"] == node]
        received = traffic[traffic["dst"] == node]
        known = node in state.index
        rows.append(
            {
                "site": node,
                "x": layout[node][0],
                "y": layout[node][1],
                "state": str(state.at[node, "state"]) if known else "unknown",
                "step": int(state.at[node, "step"]) if known else None,
                "detail": str(state.at[node, "detail"]) if known else "",
                "updated_at": str(state.at[node, "updated_at"]) if known else "",
                "n_train": int(n_train.get(node, 0)),
                "sent": int(sent["messages"].sum()),
                "received": int(received["messages"].sum()),
                "kilobytes_sent": float(sent["bytes"].sum()) / 1000.0,
                "rejected": int(received["rejected"].sum()),
            }
        )
    return pd.DataFrame(rows)


def edge_table(
    edges: Sequence[Sequence[str]], nodes: pd.DataFrame, exchanges: pd.DataFrame, method: str
) -> pd.DataFrame:
    """One row per undirected link: end points, both directions' traffic, last exchange step."""
    where = {row.site: (row.x, row.y) for row in nodes.itertuples()}
    traffic = _traffic(exchanges, method)
    rows = []
    for a, b in edges:
        if a not in where or b not in where:
            continue
        both = traffic[
            ((traffic["src"] == a) & (traffic["dst"] == b))
            | ((traffic["src"] == b) & (traffic["dst"] == a))
        ]
        rows.append(
            {
                "edge": f"{a} – {b}",
                "x": where[a][0],
                "y": where[a][1],
                "x2": where[b][0],
                "y2": where[b][1],
                "messages": int(both["messages"].sum()),
                "kilobytes": float(both["bytes"].sum()) / 1000.0,
                "last_step": int(both["last_step"].max()) if not both.empty else None,
            }
        )
    return pd.DataFrame(
        rows, columns=["edge", "x", "y", "x2", "y2", "messages", "kilobytes", "last_step"]
    )


def neighbours(site: str, edges: Sequence[Sequence[str]]) -> list[str]:
    """The peers `site` is linked to in the topology."""
    return site_order({b if a == site else a for a, b in edges if site in (a, b)})


def _count(frame: pd.DataFrame, peer: str, column: str) -> int:
    return int(frame.at[peer, column]) if peer in frame.index else 0


def peer_table(
    site: str, peers: Sequence[str], exchanges: pd.DataFrame, method: str
) -> pd.DataFrame:
    """What `site` exchanged with each peer: messages and kB each way, last exchange step."""
    traffic = _traffic(exchanges, method)
    out = traffic[traffic["src"] == site].set_index("dst")
    back = traffic[traffic["dst"] == site].set_index("src")
    rows = []
    for peer in peers:
        steps = [int(t.at[peer, "last_step"]) for t in (out, back) if peer in t.index]
        rows.append(
            {
                "Peer": peer,
                "Messages sent": _count(out, peer, "messages"),
                "Messages received": _count(back, peer, "messages"),
                "kB sent": round(_count(out, peer, "bytes") / 1000.0, 1),
                "kB received": round(_count(back, peer, "bytes") / 1000.0, 1),
                "Rejected by this site": _count(back, peer, "rejected"),
                "Last exchange": f"step {max(steps)}" if steps else "never",
            }
        )
    return pd.DataFrame(rows)
