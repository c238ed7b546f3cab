"""One hospital node: local training, background swaps over mutual TLS, checkpoints, status."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from typing import Any

from torch import Tensor

from consensus import make_algorithm
from consensus.privacy_config import PrivacyConfigError
from consensus.transport.grpc_transport import (
    ExchangeServer,
    ExchangeWorker,
    TlsMaterial,
    load_tls,
)
from hospital_node.checkpoint import load_latest_checkpoint
from hospital_node.data.site import SiteData, load_site
from hospital_node.node.checkpointing import NodeCheckpoints
from hospital_node.node.config import NodeConfig
from hospital_node.node.handler import NodeHandler, copy_parameters
from hospital_node.node.network import (
    build_sharer,
    fetch_neighbour_model,
    start_metrics_worker,
    start_server,
    start_worker,
)
from hospital_node.node.privacy import NodePrivacy, PrivacyStateError
from hospital_node.node.report import NodeReporter
from hospital_node.node.review import NodeEvaluation, NodeReviewer
from hospital_node.node.state import lock_state_dir, next_boot_epoch, remove_stale_temp_files
from hospital_node.training.model import initial_model
from hospital_node.training.step import HospitalTrainer, ModelStack

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

    Training is the simulation's own path (`training.step`): a ModelStack of one model whose
    parameters (`self.params`) the algorithm updates in place, and a HospitalTrainer for the
    batches, positive weights and DP-SGD.
    Privacy ([privacy] mode, docs/privacy.md): `self.privacy` (NodePrivacy) holds exchange
    privacy (passed to the algorithm) or the DP-SGD mechanism (passed to the trainer), its
    accountant restored from the checkpoint and the ledger so epsilon never resets.
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
        self.checkpoints = NodeCheckpoints.for_node(config)
        self.handler: NodeHandler | None = None
        self.server: ExchangeServer | None = None
        self.worker: ExchangeWorker | None = None
        self.reporter: NodeReporter | None = None
        self.privacy: NodePrivacy | None = None
        self.sharer: Any = None  # MetricsSharer when [metrics] share = true
        self.metrics_worker: Any = None
        self._saved_privacy: dict[str, Any] | None = None
        self._tls: TlsMaterial | None = None
        self._state_lock: Any = None  # STATE_DIR/node.lock, held while the node runs

    # -- initialize -----------------------------------------------------------------------------

    def initialize(self) -> None:
        """Everything before training; the server answers swaps only once the model is final."""
        config, paths = self.config, self.config.paths
        self.state = "starting"
        paths.state_dir.mkdir(parents=True, exist_ok=True)
        self._state_lock = lock_state_dir(paths.state_dir)  # one node per state folder
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
            self.sharer = build_sharer(config, self._tls, self.boot_epoch, self.reporter.shared)
            self.server = start_server(self.config, self._tls, self.handler, self.sharer)
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
        self.metrics_worker = start_metrics_worker(config, self._tls, self.handler, self.sharer)
        self.state = "training"
        self.reporter.log_privacy()
        self.reporter.node_status(self.display_state)
        self.reporter.write_status()
        log.info("%s: training from step %d (boot epoch %d)", config.name, self.step,
                 self.boot_epoch)  # fmt: skip

    def _load_data(self) -> None:
        config = self.config
        site = load_site(config.paths.site_dir, config.data)
        self.train: SiteData = site.subset("train")
        self.test: SiteData = site.subset("test")
        self.val_size = len(site.subset("val"))
        self.reviewer = NodeReviewer.for_site(name=config.name, site_dir=config.paths.site_dir,
            test=self.test, config=config.evaluation, seed=config.training.seed)  # fmt: skip
        if len(self.train) == 0:
            raise NodeError(
                f"{config.paths.site_dir}: no image in the train split; "
                "check the split column of labels.csv"
            )

    def _build_training(self) -> None:
        config, training = self.config, self.config.training
        module = initial_model(config.model, seed=training.seed)  # the same on every node
        self.stack = ModelStack.for_training(module, copies=1, config=training)
        self.params = self.stack.views[0]  # live tensors: the algorithm writes them in place
        self.privacy = NodePrivacy(
            config.privacy,
            node=config.name,
            ledger_path=config.paths.privacy_ledger,
            n_records=len(self.train),
        )
        # exchange: every edge's first reference is this common (public) initial model
        self.privacy.build_exchange(
            peers=config.peer_names, initial={k: v.clone() for k, v in self.params.items()}
        )
        self.steps_budget = training.steps_for(len(self.train))  # steps, or epochs of the data
        dpsgd = self.privacy.build_dpsgd(
            module, batch_size=training.batch_size, steps=self.steps_budget,
            patient_ids=self.train.patient_ids,
        )  # fmt: skip
        self.trainer = HospitalTrainer.build(
            name=config.name,
            images=self.train.images,
            labels=self.train.labels,
            config=training,
            dpsgd=dpsgd,
            secret_sampling=True,  # DP-SGD's Poisson draws never enter a checkpoint
        )
        self._make_algorithm()
        self.handler = NodeHandler(
            name=config.name,
            peers=config.peer_names,
            params=self.params,
            swap_schema=self.algorithm.wire_schema(),
            lock=self.lock,
            boot_epoch=self.boot_epoch,
            max_pending_per_peer=config.exchange.max_pending_per_peer,
            before_send=self.privacy.persist,
            serve_model=self.privacy.mode != "exchange",
            reuse_releases=self.privacy.mode == "exchange",
        )

    def _make_algorithm(self) -> None:
        """The consensus algorithm over the model's live parameters (fresh duals)."""
        config = self.config
        self.algorithm = make_algorithm(
            config.consensus,
            node=config.name,
            neighbours=config.peer_names,
            params=self.params,
            node_order=sorted({config.name, *config.peer_names}),
            edge_weights=config.edge_weights(),
            num_samples=len(self.train),
            privacy=self.privacy.exchange,
        )

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
            self.stack.load_node_state(0, state["model"])  # copies into the live parameters
            self.algorithm.load_state_dict(state["algorithm"])
            # checkpoints of earlier versions hold the batch sampler alone
            self.trainer.load_state_dict(state.get("trainer", {"sampler": state.get("sampler")}))
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
        fetch = self.config.exchange.join == "fetch"
        if fetch and self.privacy.mode == "exchange":
            log.info("%s: exchange privacy: neighbours do not send raw models, so this node "
                     "starts from the common initial model (join = 'fetch' skipped)",
                     self.config.name)  # fmt: skip
            return False
        return fetch

    def _start_privacy(self) -> None:
        """Continue the spent epsilon from the checkpoint or the ledger, whichever is ahead."""
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
            copy_parameters(self.params, params)
            self._make_algorithm()  # duals and outgoing messages start from the fetched model
        self.joined_from = peer
        log.info("%s: joined with the model of %s", self.config.name, peer)

    # -- train ------------------------------------------------------------------------------------

    def run(self, *, max_steps: int | None = None) -> int:
        """Train until `stop_event` is set or the node's step count reaches `max_steps`."""
        if self.state != "training":
            raise NodeError("run() needs a successful initialize() first")
        pace = self.config.run
        max_steps = max_steps if max_steps is not None else (self.steps_budget or None)
        min_step_s = 1.0 / pace.max_steps_per_second if pace.max_steps_per_second else 0.0
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
                next_status = time.monotonic() + pace.status_every_s
            if min_step_s:
                self.stop_event.wait(max(0.0, min_step_s - (time.monotonic() - started)))
        return self.step

    def train_step(self) -> float | None:
        """Apply received messages, then one local step on the next batch (`training.step`).

        DP-SGD: a Poisson-sampled batch, per-image clipping and noise, one accountant step;
        the loss is None when the batch is empty.
        """
        self.handler.apply_pending()
        ((grads, loss),) = self.stack.gradients([0], [self.trainer])
        with self.lock:
            self.algorithm.local_step(grads)
            self.step = self.algorithm.step
        return loss

    def _periodic(self) -> None:
        step, every = self.step, self.config.evaluation.every
        if step % self.config.run.log_every == 0:
            self.reporter.log_progress()
        if every and step % every == 0:
            self.reporter.log_evaluation(self.evaluate())
        if step % self.config.training.checkpoint_every == 0:
            self.checkpoint()

    def get_weights(self) -> dict[str, Tensor]:
        """A copy of the model's parameters and buffers."""
        with self.lock:
            return self.stack.node_state(0)

    def evaluate(self) -> NodeEvaluation | None:
        """Local-test AUCs, with a full review every n-th time (NodeReviewer); None: no test."""
        # only this (training) thread writes the parameters: no lock needed to read them
        return self.reviewer.evaluate(self.step, lambda x: self.stack.predict_node(0, x))

    def checkpoint(self) -> bool:
        """Write model, duals, sampler, gates, counters, boot epoch; False if it failed (logged)."""
        self.handler.apply_pending()
        with self.lock:
            state = {
                "node": self.config.name,
                "method": self.algorithm.method,
                "boot_epoch": self.boot_epoch,
                "model": self.stack.node_state(0),
                "algorithm": self.algorithm.state_dict(),  # duals, outgoing, step counter
                "trainer": self.trainer.state_dict(),  # batch order and augmentation
                "privacy": self.privacy.state_dict(),  # accountant only, never the generator
                "saved_at": time.time(),
            }
            with contextlib.suppress(OSError):  # the checkpoint carries the same accountant
                self.privacy.persist()
            step = self.step
        state["handler"] = self.handler.state_dict()
        return self.checkpoints.save(step, state)

    @property
    def last_checkpoint(self) -> dict[str, Any] | None:
        return self.checkpoints.last

    # -- finalize ---------------------------------------------------------------------------------

    def shutdown(self, *, status: str = "interrupted") -> None:
        """Stop swaps, report NOT_SERVING, close the server, final checkpoint, store status.

        `status` is the run status for the results store: 'interrupted' (SIGTERM), 'finished'
        (max_steps reached) or 'failed'. Safe after a failed or partial initialize().
        """
        trained = self.state == "training"
        self.state = "stopping"
        grace = self.config.exchange.shutdown_grace_s
        for worker in (self.worker, self.metrics_worker):
            if worker is not None:
                worker.stop(timeout=grace)
        if self.server is not None:
            self.server.set_serving(False)
            self.server.stop(grace)
        if trained and not self.checkpoint():
            log.error("%s: the final checkpoint failed (see above)", self.config.name)
        self.state = "stopped"
        if self.reporter is not None:
            self.reporter.close(run_status=status, trained=trained)
        if self._state_lock is not None:
            self._state_lock.close()  # releases the lock
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
