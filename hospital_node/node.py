"""One hospital node: local training, background swaps over mutual TLS, checkpoints, status."""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from collections import deque
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from consensus import ConsensusOptimizer, make_algorithm
from consensus.privacy import PrivacyConfigError
from consensus.transport.grpc_transport import (
    ExchangeServer,
    ExchangeWorker,
    TlsMaterial,
    load_tls,
)
from hospital_node.checkpoint import load_latest_checkpoint, save_checkpoint
from hospital_node.data import SiteData, load_site
from hospital_node.evaluate import Evaluation, EvaluationError, evaluate_scores
from hospital_node.model import build_model
from hospital_node.node_config import NodeConfig
from hospital_node.node_handler import NodeHandler, copy_parameters
from hospital_node.node_network import fetch_neighbour_model, start_server, start_worker
from hospital_node.node_privacy import NodePrivacy, PrivacyStateError
from hospital_node.node_report import NodeReporter
from hospital_node.node_state import next_boot_epoch, remove_stale_temp_files
from hospital_node.train import BatchSampler, positive_weights

log = logging.getLogger(__name__)


class NodeError(RuntimeError):
    """The node cannot start or go on; the message says what to fix."""


class HospitalNode:
    """One hospital's node, with an explicit lifecycle (as MONAI's fl ClientAlgo):

    `initialize()` (boot epoch, data, model, store, checkpoint or join, server, swap worker),
    `run(max_steps=...)` (train until `stop_event` is set or the step count is reached),
    `get_weights()`, `evaluate()`, and `shutdown(status=...)` (stop swaps, final checkpoint).

    Threads: the caller's thread trains; gRPC server threads and the ExchangeWorker's pool call
    the NodeHandler. `self.lock` guards the algorithm state (duals, outgoing messages) and the
    parameters while they change; received messages are applied between steps.

    Privacy ([privacy] mode, docs/privacy.md): `self.privacy` (NodePrivacy) holds exchange
    privacy (passed to the algorithm) or DP-SGD (wraps model and optimizer after restore/join),
    its accountant restored from the checkpoint and the ledger so epsilon never resets.
    """

    def __init__(self, *, config: NodeConfig, stop_event: threading.Event | None = None) -> None:
        if config.consensus.method == "fedavg":
            raise NodeError(
                "fedavg needs a central server; a node network runs ecl-pdmm, "
                "ecl-admm, gossip or local: change [algorithm] method"
            )
        self.config = config
        self.stop_event = stop_event or threading.Event()
        self.lock = threading.Lock()
        self.state = "created"
        self.step = 0
        self.boot_epoch = 0
        self.resumed_from_step: int | None = None
        self.joined_from: str | None = None
        self.losses: deque[float] = deque(maxlen=50)
        self.last_checkpoint: dict[str, Any] | None = None
        self.latest_eval: dict[str, Any] | None = None
        self.handler: NodeHandler | None = None
        self.server: ExchangeServer | None = None
        self.worker: ExchangeWorker | None = None
        self.reporter: NodeReporter | None = None
        self.privacy: NodePrivacy | None = None
        self._saved_privacy: dict[str, Any] | None = None
        self._tls: TlsMaterial | None = None

    # -- initialize -----------------------------------------------------------------------------

    def initialize(self) -> None:
        """Everything before training; the server answers swaps only once the model is final."""
        paths = self.config.paths
        self.state = "starting"
        paths.state_dir.mkdir(parents=True, exist_ok=True)
        for folder in (paths.checkpoint_dir, paths.state_dir):
            remove_stale_temp_files(folder)
        self.boot_epoch = next_boot_epoch(paths.boot_epoch_file)  # before anything is sent
        self._tls = load_tls(ca_cert=paths.ca_cert, cert=paths.cert, key=paths.key)
        if self._tls.name != self.config.name:
            raise NodeError(
                f"{paths.cert} is for {self._tls.name!r}, this node is "
                f"{self.config.name!r}: use this hospital's bundle"
            )
        self._load_data()
        try:
            self._build_training()
            self.reporter = NodeReporter(node=self, config=self.config)
            self.reporter.open_store(self.train, self.val_size, self.test)
            restored = self._restore()
            self.reporter.store_truncate(self.step)
            self.server = start_server(self.config, self._tls, self.handler)
            if restored is None and self._joins():
                self.state = "joining"
                self.reporter.write_status()
                self._join()
            self._start_privacy()
        except (PrivacyConfigError, PrivacyStateError) as exc:
            raise NodeError(f"[privacy] mode {self.config.privacy.mode!r}: {exc}") from exc
        self.handler.attach(self.algorithm)
        self.server.set_serving(True)
        self.worker = start_worker(self.config, self._tls, self.handler)
        self.state = "training"
        self.reporter.log_privacy()
        self.reporter.node_status(self.display_state)
        self.reporter.write_status()
        log.info(
            "%s: training from step %d (boot epoch %d)",
            self.config.name,
            self.step,
            self.boot_epoch,
        )

    def _load_data(self) -> None:
        site = load_site(self.config.paths.site_dir, self.config.data_config())
        self.train: SiteData = site.subset("train")
        self.test: SiteData = site.subset("test")
        self.val_size = len(site.subset("val"))
        if len(self.train) == 0:
            raise NodeError(
                f"{self.config.paths.site_dir}: no image in the train split; "
                "check the split column of labels.csv"
            )

    def _build_training(self) -> None:
        training = self.config.training
        with torch.random.fork_rng():  # same seed on every node: one common initial model
            torch.manual_seed(training.seed)
            self.model = build_model(self.config.model_config())
        self.model.train()
        self.privacy = NodePrivacy(
            self.config.privacy,
            node=self.config.name,
            ledger_path=self.config.paths.privacy_ledger,
            n_records=len(self.train),
        )
        # exchange: every edge's first reference is this common (public) initial model
        self.privacy.build_exchange(
            peers=self.config.peer_names, initial=dict(self.model.named_parameters())
        )
        self._make_algorithm()
        self.train_model, self.train_optimizer = self.model, self.optimizer
        seed = zlib.crc32(f"{training.seed}:{self.config.name}".encode())
        self.sampler = BatchSampler(
            num_items=len(self.train), batch_size=training.batch_size, seed=seed
        )
        # DP-SGD: no positive weights, they come from the site's labels outside the mechanism
        self.pos_weight = None if self.privacy.mode == "dpsgd" else positive_weights(
            self.train.labels, max_weight=training.max_positive_weight
        )  # fmt: skip
        self.handler = NodeHandler(
            name=self.config.name,
            peers=self.config.peer_names,
            params=dict(self.model.named_parameters()),
            swap_schema=self.algorithm.wire_schema(),
            lock=self.lock,
            boot_epoch=self.boot_epoch,
            max_pending_per_peer=self.config.exchange.max_pending_per_peer,
            before_send=self.privacy.persist,
            serve_model=self.privacy.mode != "exchange",
            reuse_releases=self.privacy.mode == "exchange",
        )

    def _make_algorithm(self) -> None:
        """Algorithm + optimizer over the model's live parameters (fresh duals)."""
        config = self.config
        self.algorithm = make_algorithm(
            config.consensus,
            node=config.name,
            neighbours=config.peer_names,
            params=dict(self.model.named_parameters()),
            node_order=sorted({config.name, *config.peer_names}),
            edge_weights=config.edge_weights(),
            num_samples=len(self.train),
            privacy=self.privacy.exchange,
        )
        self.optimizer = ConsensusOptimizer(self.model.named_parameters(), algorithm=self.algorithm)

    def _restore(self) -> int | None:
        """Load the newest checkpoint that verifies (corrupt ones are skipped); its step or None."""
        found = load_latest_checkpoint(self.config.paths.checkpoint_dir)
        if found is None:
            log.info("%s: no checkpoint in %s", self.config.name, self.config.paths.checkpoint_dir)
            return None
        step, state = found
        if state.get("node") != self.config.name or state.get("method") != self.algorithm.method:
            raise NodeError(
                f"checkpoint {step} in {self.config.paths.checkpoint_dir} is for "
                f"{state.get('node')}/{state.get('method')}: point checkpoint_dir "
                "at this node's own folder"
            )
        self.privacy.check_saved(state.get("privacy"), f"checkpoint {step}")
        self._saved_privacy = state.get("privacy")
        try:
            self.model.load_state_dict(state["model"])  # copies into the live parameters
            self.optimizer.load_state_dict(state["algorithm"])
            self.sampler.load_state_dict(state["sampler"])
            self.handler.load_state_dict(state["handler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise NodeError(
                f"checkpoint {step} in {self.config.paths.checkpoint_dir} does not fit this "
                f"configuration (model, image size, peers or site changed?): {exc}. Restore "
                "the old settings, or move the checkpoint folder aside to start afresh"
            ) from exc
        self.step = self.resumed_from_step = step
        saved_epoch = int(state.get("boot_epoch", 0))
        if saved_epoch >= self.boot_epoch:  # the boot-epoch file was lost or restored from backup
            self.boot_epoch = next_boot_epoch(self.config.paths.boot_epoch_file, floor=saved_epoch)
            self.handler.set_boot_epoch(self.boot_epoch)
            log.warning("%s: boot_epoch.json was behind the checkpoint; now at epoch %d",
                        self.config.name, self.boot_epoch)  # fmt: skip
        log.info("%s: resumed from checkpoint at step %d", self.config.name, step)
        return step

    def _joins(self) -> bool:
        """Whether a node without a checkpoint asks its neighbours for their model."""
        if self.config.exchange.join != "fetch":
            return False
        if self.privacy.mode == "exchange":
            log.info("%s: exchange privacy: neighbours do not send raw models, so this node "
                     "starts from the common initial model (join = 'fetch' skipped)",
                     self.config.name)  # fmt: skip
            return False
        return True

    def _start_privacy(self) -> None:
        """DP-SGD wraps the final model and optimizer; then the spent epsilon is restored."""
        self.train_model, self.train_optimizer = self.model, self.optimizer  # (re)made by _join
        private = self.privacy.start_training(
            self.model,
            self.optimizer,
            images=self.train.images,
            labels=self.train.labels,
            patient_ids=self.train.patient_ids,
            batch_size=self.config.training.batch_size,
        )
        if private is not None:
            self.train_model, self.train_optimizer = private.model, private.optimizer
        self.privacy.restore(self._saved_privacy)
        with self.lock:
            self.privacy.persist()

    def _join(self) -> None:
        """Start from a neighbour's current model when one answers in time (join = fetch)."""
        fetched = fetch_neighbour_model(self.config, self._tls, self.handler, self.stop_event)
        if fetched is None:
            return
        peer, params = fetched
        with self.lock:
            copy_parameters(dict(self.model.named_parameters()), params)
            self._make_algorithm()  # duals and outgoing messages start from the fetched model
        self.joined_from = peer
        log.info("%s: joined with the model of %s", self.config.name, peer)

    # -- train ------------------------------------------------------------------------------------

    def run(self, *, max_steps: int | None = None) -> int:
        """Train until `stop_event` is set or the node's step count reaches `max_steps`."""
        if self.state != "training":
            raise NodeError("run() needs a successful initialize() first")
        training = self.config.training
        min_step_s = 1.0 / training.max_steps_per_second if training.max_steps_per_second else 0.0
        next_status = 0.0
        while not self.stop_event.is_set() and (max_steps is None or self.step < max_steps):
            started = time.monotonic()
            if self.privacy.training_done():  # DP-SGD target epsilon reached: no more steps
                if max_steps is not None:
                    break
                self.handler.apply_pending()
                self.stop_event.wait(min_step_s or 0.5)
            else:
                loss = self.train_step()
                if loss is not None:
                    self.losses.append(loss)
                self._periodic()
            if time.monotonic() >= next_status:
                self.reporter.write_status()
                next_status = time.monotonic() + training.status_every_s
            if min_step_s:
                self.stop_event.wait(max(0.0, min_step_s - (time.monotonic() - started)))
        return self.step

    def train_step(self) -> float | None:
        """Apply received messages, then one local step on one batch (BCE with logits).

        DP-SGD: a Poisson-sampled batch through Opacus's model and optimizer (per-image
        clipping and noise, one accountant step); its loss is None when the batch is empty.
        """
        self.handler.apply_pending()
        if self.privacy.training is not None:
            images, labels = self.privacy.next_batch()
        else:
            indices = self.sampler.next_indices()
            images, labels = self.train.images[indices], self.train.labels[indices]
        self.train_optimizer.zero_grad(set_to_none=True)
        logits = self.train_model(images)
        loss = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=self.pos_weight)
        loss.backward()
        with self.lock:
            self.train_optimizer.step()
            self.step = self.algorithm.step
        return float(loss.detach()) if len(labels) else None

    def _periodic(self) -> None:
        training, step = self.config.training, self.step
        if step % training.log_every == 0:
            self.reporter.log_progress()
        if training.eval_every and step % training.eval_every == 0:
            self.reporter.log_evaluation(self.evaluate())
        if step % training.checkpoint_every == 0:
            self.checkpoint()

    def get_weights(self) -> dict[str, Tensor]:
        """A copy of the model's parameters and buffers."""
        with self.lock:
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def evaluate(self) -> Evaluation | None:
        """Per-finding AUC on the site's own test split; None when the split is empty."""
        if len(self.test) == 0:
            return None
        self.model.eval()
        try:
            with torch.no_grad():
                chunks = [
                    self.model(self.test.images[i : i + 64]) for i in range(0, len(self.test), 64)
                ]
            scores = torch.sigmoid(torch.cat(chunks)).numpy()
        finally:
            self.model.train()
        try:
            return evaluate_scores(
                self.test.labels.numpy(), scores, self.test.patient_ids, with_ci=False
            )
        except EvaluationError as exc:
            log.warning("%s: local evaluation skipped: %s", self.config.name, exc)
            return None

    def checkpoint(self) -> None:
        """Write model, algorithm, sampler, gates, counters and boot epoch atomically."""
        self.handler.apply_pending()
        with self.lock:
            state = {
                "node": self.config.name,
                "method": self.algorithm.method,
                "boot_epoch": self.boot_epoch,
                "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "algorithm": self.optimizer.state_dict(),  # duals, outgoing, step counter
                "sampler": self.sampler.state_dict(),
                "privacy": self.privacy.state_dict(),  # accountant only, never the generator
                "saved_at": time.time(),
            }
            self.privacy.persist()
            step = self.step
        state["handler"] = self.handler.state_dict()
        path = save_checkpoint(
            self.config.paths.checkpoint_dir, step, state, keep=self.config.training.checkpoint_keep
        )
        self.last_checkpoint = {"step": step, "path": str(path), "at": time.time()}

    # -- finalize ---------------------------------------------------------------------------------

    def shutdown(self, *, status: str = "interrupted") -> None:
        """Stop swaps, report NOT_SERVING, close the server, final checkpoint, store status.

        `status` is the run status for the results store: 'interrupted' (SIGTERM), 'finished'
        (max_steps reached) or 'failed'. Safe after a failed or partial initialize().
        """
        trained = self.state == "training"
        self.state = "stopping"
        grace = self.config.exchange.shutdown_grace_s
        if self.worker is not None:
            self.worker.stop(timeout=grace)
        if self.server is not None:
            self.server.set_serving(False)
            self.server.stop(grace)
        if trained:
            try:
                self.checkpoint()
            except OSError as exc:
                log.error("%s: final checkpoint failed: %s", self.config.name, exc)
        self.state = "stopped"
        if self.reporter is not None:
            self.reporter.close(run_status=status, trained=trained)
        log.info("%s: stopped at step %d (%s)", self.config.name, self.step, status)

    @property
    def display_state(self) -> str:
        """The state shown in status and the store: while training, 'stopped_sending' once the
        exchange budget is spent and 'budget_spent' once DP-SGD's target is reached."""
        if self.state == "training" and self.privacy is not None:
            return self.privacy.state_name()
        return self.state

    def peer_clients_status(self) -> dict[str, Any]:
        """The worker's per-peer PeerStatus objects (empty when this node initiates nothing)."""
        return self.worker.status() if self.worker is not None else {}

    @property
    def pid(self) -> int:
        return os.getpid()
