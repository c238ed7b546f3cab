"""Overview page: the run, its hospital network with each node's state and traffic, privacy."""

from __future__ import annotations

from typing import Any

import streamlit as st

from app import charts, data
from app.network import edge_table, neighbours, node_table, peer_table
from app.review import METHOD_LABELS, default_method, method_order, site_order
from app.settings import AppContext
from app.shell import STALE_AFTER_S, run_page, seconds_since
from hospital_node.store.reader import RunInfo


def privacy_setting(info: RunInfo) -> str:
    """The run's privacy mode and its main setting, in a few words."""
    settings: Any = info.privacy or info.config.get("privacy")
    mode = str(settings.get("mode", "off")) if isinstance(settings, dict) else "off"
    if mode in ("off", "none"):
        return "none (no differential privacy)"
    parts = [mode]
    if settings.get("target_epsilon") is not None:
        parts.append(f"target ε {settings['target_epsilon']:g}")
    elif settings.get("noise_multiplier") is not None:
        parts.append(f"noise σ {settings['noise_multiplier']:g}")
    if settings.get("epsilon_budget") is not None:
        parts.append(f"budget ε {settings['epsilon_budget']:g}")
    return ", ".join(parts)


def _run_status(info: RunInfo) -> None:
    """Status line, with a warning when a 'running' run has gone quiet."""
    if info.status == "running":
        quiet = seconds_since(info.updated_at)
        if quiet is not None and quiet > STALE_AFTER_S:
            st.warning(
                f"This run is marked as running but has written nothing for {quiet / 60:.0f} "
                "minutes: it has probably stopped. The pages show the results it saved."
            )
        else:
            st.info(
                "This run is still training. The pages show what it has saved so far; "
                "reload (press R) to see newer results."
            )
    elif info.status in ("interrupted", "failed"):
        st.warning(f"This run ended early ({info.status}); the pages show what it saved.")


def run_methods(info: RunInfo) -> list[str]:
    """The methods a run trains: the simulation lists them, a node runs one ([algorithm])."""
    methods = info.config.get("methods")
    if methods:
        return list(methods)
    consensus = info.config.get("consensus")
    method = consensus.get("method") if isinstance(consensus, dict) else None
    return [str(method)] if method else []


def _summary(info: RunInfo, hospitals: list[str]) -> None:
    methods = run_methods(info)
    model = info.config.get("model", {})
    cols = st.columns(4)
    cols[0].metric("Status", info.status)
    cols[1].metric("Hospitals", len(hospitals))
    cols[2].metric("Network", str(info.topology.get("kind", "?")))
    cols[3].metric("Privacy", privacy_setting(info).split(" (")[0].split(",")[0])
    st.caption(
        f"Methods: {', '.join(methods) or '—'} · model: {model.get('architecture', '?')} · "
        f"privacy: {privacy_setting(info)} · started {info.created_at[:19].replace('T', ' ')} "
        f"UTC · last update {info.updated_at[:19].replace('T', ' ')} UTC"
    )


def _network(context: AppContext, info: RunInfo, hospitals: list[str]) -> None:
    path, run_id, version = context.store_path, context.run_id, context.version
    status = data.load_node_status(path, run_id, version)
    exchanges = data.load_exchanges(path, run_id, version)
    sites = data.load_sites(path, run_id, version)
    methods = method_order(
        [m for m in [*run_methods(info), *status["method"]] if m != "centralized"]
    )
    if not methods:
        st.info("No decentralized method has started yet; the network has no state to show.")
        return
    method = st.selectbox(
        "Method",
        methods,
        index=methods.index(default_method(methods)),
        format_func=lambda m: METHOD_LABELS.get(m, m),
        key="overview_method",
    )
    own = info.run_id if info.kind == "node" else None
    nodes = node_table(
        hospitals, method=method, status=status, exchanges=exchanges, sites=sites, self_site=own
    )
    edges = edge_table(info.topology.get("edges", []), nodes, exchanges, method)
    st.altair_chart(charts.network_chart(nodes, edges), width="content")
    if own is not None:
        st.caption(
            f"The results store of hospital **{own}** (black ring). Its neighbours' states are "
            f"what {own} has heard of them: *heard* = a message arrived recently, *silent* = "
            "none for a while, *never_heard*; their step is known only when they share metrics."
        )
    _node_table(nodes)
    site = st.selectbox(
        "Exchanges of one hospital with each peer",
        hospitals,
        index=hospitals.index(own) if own in hospitals else 0,  # a node: its own exchanges
        key="overview_site",
    )
    peers = neighbours(site, info.topology.get("edges", []))
    if not peers:
        st.caption(f"{site} has no peers in this network.")
        return
    st.dataframe(peer_table(site, peers, exchanges, method), hide_index=True, width="stretch")


def _node_table(nodes) -> None:
    shown = nodes[["site", "state", "step", "sent", "received", "kilobytes_sent", "rejected"]]
    st.dataframe(
        shown.rename(
            columns={
                "site": "Hospital",
                "state": "State",
                "step": "Last step",
                "sent": "Messages sent",
                "received": "Messages received",
                "kilobytes_sent": "kB sent",
                "rejected": "Rejected",
            }
        ),
        hide_index=True,
        width="stretch",
        column_config={"kB sent": st.column_config.NumberColumn(format="%.1f")},
    )


def render(context: AppContext) -> None:
    """The overview page."""
    st.title("Overview")
    info = data.load_run_info(context.store_path, context.run_id, context.version)
    hospitals = site_order(info.topology.get("nodes", []))
    _run_status(info)
    _summary(info, hospitals)
    st.subheader("Hospital network")
    st.caption(
        "Each circle is a hospital; its colour is its state. Lines are the links on which "
        "hospitals exchange model variables (never images); thicker = more messages. "
        "Hover for numbers."
    )
    _network(context, info, hospitals)


if __name__ == "__main__":
    run_page(render)
