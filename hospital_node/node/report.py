"""What a running node reports: rows in its results store and the STATE_DIR/status.json file."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Protocol

from data_tools.labels import FINDINGS
from hospital_node.configio import to_dict
from hospital_node.data.site import SiteData
from hospital_node.evaluation.summary import SiteSummary, summarize
from hospital_node.node.config import NodeConfig
from hospital_node.node.handler import PeerCounters
from hospital_node.node.review import NodeEvaluation
from hospital_node.node.state import write_json
from hospital_node.store.review_writes import iso_time
from hospital_node.store.writer import PrivacyStatus, ResultsStore, SiteInfo, StoreError

log = logging.getLogger(__name__)

STATUS_VERSION = 1


class ReportedNode(Protocol):
    """What the reporter reads of a running node (HospitalNode provides it)."""

    step: int
    boot_epoch: int
    resumed_from_step: int | None
    joined_from: str | None
    losses: deque[float]
    last_checkpoint: dict[str, Any] | None
    checkpoints: Any  # NodeCheckpoints
    handler: Any  # NodeHandler | None
    server: Any  # ExchangeServer | None
    worker: Any  # ExchangeWorker | None
    privacy: Any  # NodePrivacy | None
    sharer: Any  # MetricsSharer | None

    @property
    def display_state(self) -> str: ...
    def get_weights(self) -> dict[str, Any]: ...
    @property
    def pid(self) -> int: ...
    def peer_clients_status(self) -> dict[str, Any]: ...


class FailureStreak:
    """Logs the first failure of a streak of failed writes (e.g. a full disk) as a warning and
    the rest at debug level, then one line with the count when writes succeed again."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._failures = 0

    def failed(self, what: str, exc: Exception) -> None:
        self._failures += 1
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        log.log(level, "%s: %s: %s (further failures are counted, not logged)", self._name,
                what, exc)  # fmt: skip

    def succeeded(self, what: str) -> None:
        if self._failures:
            log.warning("%s: %s work again after %d failures", self._name, what, self._failures)
            self._failures = 0


class NodeReporter:
    """Writes a node's progress to its results store (run kind 'node', run_id = the hospital
    name, resumed across restarts) and its status.json (rewritten atomically every few seconds).

    A store write that fails (e.g. the file stays locked) is logged and skipped: the results
    are re-derivable, training must not stop for them.
    """

    def __init__(self, *, node: ReportedNode, config: NodeConfig) -> None:
        self._node = node
        self._config = config
        self.run_id = config.name
        self.method = config.consensus.method
        self._store: ResultsStore | None = None
        self._last_progress = (time.monotonic(), node.step)
        self.images_per_second: float | None = None
        self._started_at = time.time()
        self.latest_eval: dict[str, Any] | None = None
        self._store_failures = FailureStreak(config.name)
        self._status_failures = FailureStreak(config.name)

    # -- results store ------------------------------------------------------------------------

    def open_store(self, train: SiteData, n_val: int, test: SiteData) -> None:
        """Start the run, or resume it when the store already has one for this hospital."""
        store = ResultsStore.open(self._config.paths.results_store)
        self._store = store
        try:
            store.run_info(self.run_id)
        except StoreError:
            store.start_run(
                self.run_id,
                kind="node",
                config=to_dict(self._config),
                topology=self._topology(),
                privacy=to_dict(self._config.privacy),
            )
        else:
            store.resume_run(self.run_id)
        positives = train.labels.sum(0).tolist()
        site = SiteInfo(
            site=self._config.name,
            n_train=len(train),
            n_val=n_val,
            n_test=len(test),
            train_positives={f: int(c) for f, c in zip(FINDINGS, positives, strict=True)},
        )
        self._write(store.add_sites, self.run_id, [site])

    def _topology(self) -> dict[str, Any]:
        config = self._config
        edges = config.edges or tuple(tuple(sorted((config.name, p))) for p in config.peer_names)
        nodes = sorted({n for edge in edges for n in edge})
        return {"kind": "edges", "nodes": nodes, "edges": [list(e) for e in edges]}

    def store_truncate(self, step: int) -> None:
        """Drop rows logged after the restored checkpoint, so they are not counted twice."""
        self._write(self._require_store().truncate_after, self.run_id, self.method, step)
        self._last_progress = (time.monotonic(), step)

    def log_privacy(self, row: PrivacyStatus | None = None) -> None:
        """The privacy row (mode, epsilon so far, exhausted flag), as the simulation writes it."""
        row = row if row is not None else self._privacy_row()
        if row is not None:
            self._write(self._require_store().set_privacy, self.run_id, self.method,
                        self._config.name, row)  # fmt: skip

    def _privacy_row(self) -> PrivacyStatus | None:
        privacy = self._node.privacy
        return privacy.status_row() if privacy is not None else None

    def node_status(self, state: str, detail: str = "") -> None:
        node = self._node
        self._write(
            self._require_store().set_node_status,
            self.run_id,
            self.method,
            self._config.name,
            node.step,
            state,
            detail,
        )

    def log_progress(self) -> None:
        """train_loss, throughput and traffic metrics, exchange snapshots, node status."""
        node, store, name = self._node, self._require_store(), self._config.name
        counters = node.handler.counters()
        privacy = self._privacy_row()  # epsilon is computed once per report
        self._write(store.log_metrics, self.run_id, self.method, name, node.step,
                    self._metrics(counters, privacy))  # fmt: skip
        for peer, c in counters.items():
            self._write(store.set_exchange, self.run_id, self.method, name, peer, node.step,
                        messages=c.messages_sent, n_bytes=c.bytes_sent)  # fmt: skip
            self._write(store.set_exchange, self.run_id, self.method, peer, name, node.step,
                        messages=c.messages_received + c.rejected_total,
                        n_bytes=c.bytes_received, rejected=c.rejected_total)  # fmt: skip
        self.log_privacy(privacy)
        self.node_status(node.display_state, self._detail())
        self._log_neighbours(counters)

    def _log_neighbours(self, counters: dict[str, PeerCounters]) -> None:
        """Each neighbour's state as far as this node can tell (node_status rows of the peers):
        'heard' when a message of it arrived within 3 mean swap intervals (+ 30 s), 'silent'
        when it did before, 'never_heard'. Step: the one it shared (metrics), else -1."""
        now, store = time.time(), self._require_store()
        recent = 3 * self._config.exchange.mean_interval_s + 30.0
        known = self._node.sharer.snapshot()["known"] if self._node.sharer is not None else {}
        for peer, c in counters.items():
            heard = c.last_received_at
            if heard is None:
                state, detail = "never_heard", "no message received from it yet"
            else:
                state = "heard" if now - heard <= recent else "silent"
                detail = (f"last message received {iso_time(heard)}; {c.messages_received} "
                          f"received, {c.applied} applied")  # fmt: skip
            step = int(known.get(peer, {}).get("step", -1))
            self._write(store.set_node_status, self.run_id, self.method, peer, step, state,
                        detail)  # fmt: skip

    def _metrics(
        self, counters: dict[str, PeerCounters], privacy: PrivacyStatus | None
    ) -> dict[str, float | None]:
        node, now = self._node, time.monotonic()
        last_time, last_step = self._last_progress
        if node.step > last_step and now > last_time:
            batch = self._config.training.batch_size
            self.images_per_second = (node.step - last_step) * batch / (now - last_time)
        self._last_progress = (now, node.step)
        reasons: Counter[str] = Counter()
        for c in counters.values():
            reasons.update(c.rejected)
        spent = {} if privacy is None or privacy.epsilon is None else {"epsilon": privacy.epsilon}
        return {
            "train_loss": sum(node.losses) / len(node.losses) if node.losses else None,
            "images_per_second": self.images_per_second,
            "messages": float(
                sum(c.messages_sent + c.messages_received for c in counters.values())
            ),
            "bytes": float(sum(c.bytes_sent + c.bytes_received for c in counters.values())),
            "swaps_applied": float(sum(c.applied for c in counters.values())),
            "messages_withheld": float(sum(c.messages_withheld for c in counters.values())),
            "rejected": float(sum(reasons.values())),
            "wall_time_s": time.time() - self._started_at,
            **{f"rejected_{reason}": float(n) for reason, n in reasons.items()},
            **spent,
        }

    def log_evaluation(self, result: NodeEvaluation | None) -> None:
        """AUCs on the local test split; a full review also brings its ROC curves, calibration,
        subgroups, the model (for the case viewer) and, when sharing, the published summary."""
        if result is None:
            return
        store, name, step = self._require_store(), self._config.name, result.step
        evaluation, review = result.evaluation, result.review
        if review is None:
            self._write(store.log_evaluation, self.run_id, self.method, name, step, "local",
                        evaluation)  # fmt: skip
        else:
            self._write(store.log_review, self.run_id, self.method, name, step, "local", review)
            self._write(store.save_model, self.run_id, self.method, name, step,
                        self._model_record(), self._node.get_weights())  # fmt: skip
            if self._node.sharer is not None:
                self._node.sharer.publish(self._summary(result))
        timing = {"evaluation_s": result.seconds, "full_review": float(review is not None)}
        self._write(store.log_metrics, self.run_id, self.method, name, step, timing)
        self.latest_eval = {
            "step": step,
            "test_set": "local",
            "mean_auc": evaluation.mean_auc,
            "per_finding": dict(zip(evaluation.findings, evaluation.auc, strict=True)),
            "n_images": evaluation.n_images,
            "with_ci": evaluation.ci is not None,
        }

    def _model_record(self) -> dict[str, Any]:
        """The model config as trained, with the resolution the case viewer must feed it."""
        return {**to_dict(self._config.model), "image_size": self._config.data.image_size}

    def _summary(self, result: NodeEvaluation) -> SiteSummary:
        return summarize(
            result.evaluation,
            origin=self._config.name,
            method=self.method,
            boot_epoch=self._node.boot_epoch,
            step=result.step,
            created_at=time.time(),
            min_positives=self._config.metrics.min_positives,
        )

    def shared(self, summary: SiteSummary, via: str, received_at: float) -> None:
        """Store a summary this node published or accepted from the network (MetricsSharer)."""
        if self._store is not None:  # calls from the network may outlive close()
            self._write(self._store.set_shared_summary, self.run_id, summary, via=via,
                        received_at=received_at)  # fmt: skip

    def close(self, *, run_status: str, trained: bool) -> None:
        """Final rows: progress, node status 'stopped', run status; then status.json."""
        if self._store is not None:
            if trained:
                self.log_progress()
            self.node_status("stopped", f"run {run_status} at step {self._node.step}")
            self._write(self._store.set_run_status, self.run_id, run_status)
            self._store.close()
            self._store = None
        self.write_status()

    def _detail(self) -> str:
        peers = self.status_snapshot()["peers"]
        parts = [f"{p}: {v.get('applied', 0)} applied" for p, v in sorted(peers.items())]
        state = self._node.display_state
        if state == "stopped_sending":
            parts.insert(0, "privacy budget spent: sends nothing, still trains and receives")
        elif state == "budget_spent":
            parts.insert(0, "DP-SGD budget spent: no more training, still answers swaps")
        return "; ".join(parts)

    def _require_store(self) -> ResultsStore:
        if self._store is None:
            raise StoreError("the node's results store is not open; call open_store() first")
        return self._store

    def _write(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            call(*args, **kwargs)
        except StoreError as exc:
            self._store_failures.failed("results store write skipped", exc)
        else:
            self._store_failures.succeeded("results store writes")

    # -- status.json ------------------------------------------------------------------------------

    def status_snapshot(self) -> dict[str, Any]:
        """The status.json document (docs/hospital-it.md describes every field)."""
        node, config = self._node, self._config
        handler = node.handler.snapshot() if node.handler is not None else {}
        clients = node.peer_clients_status()
        peers = {}
        for peer in config.peers:
            entry: dict[str, Any] = {
                "address": peer.address,
                "initiator": config.initiates_with(peer.name),
                **handler.get("peers", {}).get(peer.name, {}),
            }
            if peer.name in clients:
                entry["client"] = dataclasses.asdict(clients[peer.name])
            peers[peer.name] = entry
        return {
            "version": STATUS_VERSION,
            "node": config.name,
            "network": config.network,
            "pid": node.pid,
            "state": node.display_state,
            "method": self.method,
            "listen": f"{config.listen.host}:{config.listen.port}",
            "step": node.step,
            "boot_epoch": node.boot_epoch,
            "resumed_from_step": node.resumed_from_step,
            "joined_from": node.joined_from,
            "started_at": self._started_at,
            "updated_at": time.time(),
            "train_loss": sum(node.losses) / len(node.losses) if node.losses else None,
            "images_per_second": self.images_per_second,
            "last_checkpoint": node.last_checkpoint,
            "checkpoint_failing": node.checkpoints.failing,  # None while checkpoints succeed
            "latest_eval": self.latest_eval,
            "ready": handler.get("ready", False),
            "gate": handler.get("gate", {}),
            "pending": handler.get("pending", 0),
            "server": node.server.stats() if node.server is not None else {},
            "exchanges": node.worker.outcomes() if node.worker is not None else {},
            "peers": peers,
            "privacy": node.privacy.summary() if node.privacy is not None else {"mode": "off"},
            "metrics_sharing": node.sharer.snapshot() if node.sharer is not None else None,
        }

    def write_status(self) -> None:
        """Rewrite status.json atomically (not fsynced: it is a live view, not a record)."""
        try:
            write_json(self._config.paths.status_file, self.status_snapshot(), durable=False)
        except OSError as exc:
            self._status_failures.failed("status.json not written", exc)
        else:
            self._status_failures.succeeded("status.json writes")
