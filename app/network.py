"""The hospital network for the overview: node positions, per-node and per-link traffic tables."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from app.review import site_order

NETWORK_PX = 360  # the network drawing is a square of this many pixels
NETWORK_DOMAIN = 1.4  # data units from the centre to the frame (nodes sit at radius 1)
MAX_MARKER_RADIUS_PX = 24.0
MIN_FONT_PX, MAX_FONT_PX = 7.0, 13.0
# Every state a node or the simulation writes, and the neighbour states a node records
# (what it has heard of them); anything else is drawn as 'other'.
STATE_COLOURS = {
    "training": "#1f77b4",
    "finished": "#2ca02c",
    "stopped": "#5f5f5f",
    "starting": "#ff7f0e",
    "joining": "#ff7f0e",
    "waiting": "#ff7f0e",
    "stopped_sending": "#9467bd",
    "budget_spent": "#9467bd",
    "failed": "#d62728",
    "heard": "#17becf",
    "silent": "#ff7f0e",
    "never_heard": "#bcbd22",
    "unknown": "#7f7f7f",
    "other": "#7f7f7f",
}


def marker_radius_px(n_nodes: int) -> float:
    """Circle radius in pixels: at most MAX_MARKER_RADIUS_PX, and small enough that
    neighbours on the circle never overlap (0.42 of the distance between them)."""
    px_per_unit = NETWORK_PX / (2 * NETWORK_DOMAIN)
    if n_nodes < 2:
        return MAX_MARKER_RADIUS_PX
    chord = 2 * px_per_unit * math.sin(math.pi / n_nodes)
    return min(MAX_MARKER_RADIUS_PX, 0.42 * chord)


def label_font_px(label: str, radius_px: float) -> float:
    """Font size at which a hospital's name fits inside its circle (bold, ~0.62 em/char)."""
    fitting = 2 * radius_px * 0.85 / (0.62 * max(len(label), 1))
    return max(MIN_FONT_PX, min(MAX_FONT_PX, fitting))


def state_group(state: str) -> str:
    """The state's colour group: itself when it has a colour, else 'other'."""
    return state if state in STATE_COLOURS else "other"


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
    self_site: str | None = None,
) -> pd.DataFrame:
    """One row per hospital: position, state, last step, training size, traffic totals, and
    how to draw it (marker area, font size; `is_self`: the node whose store this is).

    On a node's store the neighbours' rows are what that node has heard of them (state
    'heard', 'silent', 'never_heard'; step when they shared metrics, else unknown)."""
    layout = circle_layout(nodes)
    radius = marker_radius_px(len(nodes))
    traffic = _traffic(exchanges, method)
    state = status[status["method"] == method].set_index("site")
    n_train = dict(zip(sites["site"], sites["n_train"], strict=True))
    rows = []
    for node in nodes:
        sent = traffic[traffic["src"] == node]
        received = traffic[traffic["dst"] == node]
        known = node in state.index
        step = int(state.at[node, "step"]) if known else -1
        label = str(state.at[node, "state"]) if known else "unknown"
        rows.append(
            {
                "site": node,
                "x": layout[node][0],
                "y": layout[node][1],
                "state": label,
                "state_group": state_group(label),
                "is_self": node == self_site,
                "marker_area": math.pi * radius**2,
                "font_px": label_font_px(node, radius),
                "step": step if step >= 0 else None,
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
