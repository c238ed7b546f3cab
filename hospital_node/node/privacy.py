"""A node's differential privacy at run time: its mechanism, its durable ledger, its figures."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from consensus.privacy_config import PrivacyConfig
from consensus.private_exchange import ExchangePrivacy
from hospital_node.node.state import NodeStateError, read_json, write_json
from hospital_node.privacy.accounting import max_images_per_patient, steps_within
from hospital_node.privacy.dpsgd import DpsgdMechanism, validate_model
from hospital_node.privacy.status import exchange_status, record_level_status
from hospital_node.store.schema import PrivacyStatus

log = logging.getLogger(__name__)

LEDGER_VERSION = 1


class PrivacyStateError(RuntimeError):
    """Saved privacy state (checkpoint or ledger) that this configuration cannot continue."""


def os_seeded_generator() -> torch.Generator:
    """A noise generator seeded from the operating system: secret, and fresh at every start.

    Never restored from a checkpoint: replaying a state would reuse noise, and two releases
    with the same noise reveal their difference exactly (docs/privacy.md, "Randomness").
    """
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))


def saved_mode(state: Mapping[str, Any] | None) -> str:
    """The privacy mode a checkpoint or ledger was written with ('none' of old nodes = 'off')."""
    mode = "off" if state is None else str(state.get("mode", "off"))
    return "off" if mode == "none" else mode


class NodePrivacy:
    """One node's privacy mode: builds the mechanism, keeps the spent epsilon, reports it.

    exchange: an ExchangePrivacy (per-edge references, accountant, OS-seeded generator) for
    `make_algorithm`; once the budget is spent the node withholds every message.
    dpsgd: the DP-SGD mechanism of `hospital_node.privacy` (`build_dpsgd`; the simulation's
    own) with an OS-seeded generator and Opacus's accountant; with `target_epsilon` the node
    stops training once the next step would exceed it.

    The accountant's state goes into every checkpoint and, before any message leaves the node,
    into the ledger file STATE_DIR/privacy.json (`persist`, fsynced): a node killed after its
    last checkpoint restarts from the ledger, so releases (or DP-SGD steps) made after the
    checkpoint are never forgotten. The ledger outlives the checkpoints: moving the checkpoint
    folder aside restarts the model, not the spent epsilon.
    """

    def __init__(
        self, config: PrivacyConfig, *, node: str, ledger_path: Path, n_records: int
    ) -> None:
        self.config = config
        self.mode = config.mode
        self.node = node
        self.ledger_path = ledger_path
        self.n_records = n_records
        self.exchange: ExchangePrivacy | None = None
        self.dpsgd: DpsgdMechanism | None = None
        self._step_limit: int | None = None
        self._persisted: dict[str, Any] | None = None
        self._training_done_logged = False
        self._summary_cache: tuple[int, dict[str, Any]] | None = None

    # -- building the mechanism -----------------------------------------------------------------

    def build_exchange(
        self, *, peers: Sequence[str], initial: Mapping[str, Tensor]
    ) -> ExchangePrivacy | None:
        """Exchange mode: the ExchangePrivacy for make_algorithm (None in other modes).

        `initial` must be the common initial model (public): the first reference of every edge.
        """
        if self.mode != "exchange":
            return None
        self.exchange = ExchangePrivacy.from_config(
            self.config,
            peers=peers,
            initial=initial,
            n_records=self.n_records,
            generator=os_seeded_generator(),
        )
        return self.exchange

    def build_dpsgd(
        self, module: nn.Module, *, batch_size: int, steps: int, patient_ids: Sequence[str]
    ) -> DpsgdMechanism | None:
        """DP-SGD mode: the mechanism for this node's trainer (None in other modes).

        Raises consensus.privacy_config.PrivacyConfigError naming the layers if the model has
        BatchNorm. Poisson sampling and noise share one OS-seeded generator; the unit is one
        image, and a patient with several images is covered by the group figure.
        """
        if self.mode != "dpsgd":
            return None
        validate_model(module)
        self.dpsgd = DpsgdMechanism.from_config(
            self.config,
            n_records=self.n_records,
            batch_size=batch_size,
            steps=steps,
            generator=os_seeded_generator(),
            group_size=max_images_per_patient(patient_ids),
        )
        return self.dpsgd

    # -- spent epsilon: checkpoint, ledger, restore -------------------------------------------

    def _accountant_state(self) -> dict[str, Any] | None:
        if self.exchange is not None:
            return self.exchange.accountant.state_dict()
        if self.dpsgd is not None:
            return self.dpsgd.privacy.state_dict()
        return None

    def _count(self, state: Mapping[str, Any] | None) -> int:
        """Releases (exchange) or DP-SGD steps (dpsgd) recorded in an accountant state."""
        if not state:
            return 0
        if self.mode == "exchange":
            return sum(int(count) for _, count in state.get("segments", []))
        return sum(int(steps) for _, _, steps in state.get("history", []))

    def spent(self) -> int:
        """Releases or DP-SGD steps so far, over all runs of this node."""
        return self._count(self._accountant_state())

    def state_dict(self) -> dict[str, Any]:
        """JSON for the checkpoint: the mode and the accountant (never the generator)."""
        return {"mode": self.mode, "accountant": self._accountant_state()}

    def check_saved(self, state: Mapping[str, Any] | None, where: str) -> None:
        """Refuse to continue a checkpoint or ledger written in another privacy mode."""
        mode = saved_mode(state)
        if mode == self.mode:
            return
        raise PrivacyStateError(
            f"{where} was written with privacy mode {mode!r}, this node is configured with "
            f"{self.mode!r}. Continuing would misstate the privacy of what was already sent "
            "(the spent epsilon never resets). Go back to mode "
            f"{mode!r}; or, only if the data-protection officer agrees to start a new "
            "privacy record, move the checkpoint folder and STATE_DIR/privacy.json aside"
        )

    def restore(self, checkpoint: Mapping[str, Any] | None) -> None:
        """After restore/join and `build_dpsgd`: continue the spent epsilon from the newer of
        the checkpoint's accountant and the ledger's (the ledger is normally ahead)."""
        ledger = self._read_ledger()
        if checkpoint is not None:
            self.check_saved(checkpoint, "the checkpoint")
        current = self._accountant_state()
        saved = [(checkpoint or {}).get("accountant"), (ledger or {}).get("accountant")]
        best = max(saved, key=self._count)
        if current is not None and self._count(best) > self._count(current):
            self._load_accountant(best)
        if self.dpsgd is not None:
            self._step_limit = self._dpsgd_step_limit()
        self._summary_cache = None
        if self.mode != "off":
            spent = self.stopped_sending or self.state_name() == "budget_spent"
            log.log(logging.WARNING if spent else logging.INFO, "%s: privacy %s%s", self.node,
                    self._describe(), " (already spent at start)" if spent else "")  # fmt: skip

    def _read_ledger(self) -> dict[str, Any] | None:
        try:
            ledger = read_json(self.ledger_path)
        except NodeStateError as exc:
            raise PrivacyStateError(
                f"{exc}; the privacy ledger is damaged. Restore it from a backup: without it "
                "the releases made since the last checkpoint would be forgotten"
            ) from exc
        if ledger is None:
            return None
        if ledger.get("version") != LEDGER_VERSION or ledger.get("node") != self.node:
            raise PrivacyStateError(
                f"{self.ledger_path} is not a version-{LEDGER_VERSION} privacy ledger of node "
                f"{self.node!r}: point state_dir at this node's own folder"
            )
        self.check_saved(ledger, str(self.ledger_path))
        return ledger

    def _load_accountant(self, state: Mapping[str, Any]) -> None:
        try:
            if self.exchange is not None:
                self.exchange.accountant.load_state_dict(dict(state))
            elif self.dpsgd is not None:
                self.dpsgd.privacy.load_state_dict(dict(state))
        except (KeyError, TypeError, ValueError) as exc:
            raise PrivacyStateError(f"saved privacy accountant is unreadable: {exc}") from exc

    def persist(self) -> None:
        """Write the ledger (fsynced) if the accountant moved since the last write.

        Call it before anything computed from the site's data leaves the node, under the lock
        that guards the accountant (NodeHandler's `before_send`, and every checkpoint).
        """
        state = self._accountant_state()
        if state is None or state == self._persisted:
            return
        document = {
            "version": LEDGER_VERSION,
            "node": self.node,
            "mode": self.mode,
            "accountant": state,
            "updated_at": time.time(),
        }
        write_json(self.ledger_path, document, durable=True)
        self._persisted = state

    # -- budget ---------------------------------------------------------------------------------

    @property
    def stopped_sending(self) -> bool:
        """Exchange mode: the budget is spent, every message is withheld."""
        return self.exchange is not None and self.exchange.exhausted

    def training_done(self) -> bool:
        """DP-SGD with a target epsilon: the next step would exceed it (logged once)."""
        done = self._steps_spent()
        if done and not self._training_done_logged:
            self._training_done_logged = True
            log.warning(
                "%s: DP-SGD privacy budget spent (%s): no more training steps. The node keeps "
                "answering swaps with its private model (post-processing, no extra epsilon). "
                "Raising target_epsilon or planned_epochs weakens the guarantee: a decision "
                "for the data-protection officer",
                self.node, self._describe(),
            )  # fmt: skip
        return done

    def _dpsgd_step_limit(self) -> int | None:
        """Total DP-SGD steps whose epsilon stays within target_epsilon (None: no target)."""
        target = self.config.target_epsilon
        if target is None or self.dpsgd is None:
            return None
        return steps_within(self.dpsgd.privacy, target)

    # -- figures --------------------------------------------------------------------------------

    def state_name(self) -> str:
        """The node state to show while training: training | stopped_sending | budget_spent."""
        if self.stopped_sending:
            return "stopped_sending"
        return "budget_spent" if self._steps_spent() else "training"

    def _steps_spent(self) -> bool:
        """DP-SGD with a target: every step the target allows has been taken."""
        if self.dpsgd is None or self._step_limit is None:
            return False
        return self.dpsgd.privacy.steps >= self._step_limit

    def status_row(self) -> PrivacyStatus:
        """The results store's privacy row (the simulation writes the same)."""
        if self.exchange is not None:
            return exchange_status(self.exchange)
        if self.dpsgd is not None:
            return record_level_status(
                self.dpsgd.privacy,
                budget=self.config.target_epsilon,
                exhausted=self.state_name() == "budget_spent",
            )
        return PrivacyStatus(
            mode=self.mode, epsilon=None, delta=None, releases=0, exhausted=False,
            accountant="none",
        )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """The `privacy` entry of status.json (cached while nothing is spent)."""
        spent = self.spent()
        if self._summary_cache is not None and self._summary_cache[0] == spent:
            return self._summary_cache[1]
        summary: dict[str, Any] = {"mode": self.mode}
        if self.exchange is not None:
            summary |= self.exchange.summary()
            summary["releases_per_peer"] = self.exchange.accountant.releases_per_peer
            summary["stopped_sending"] = self.stopped_sending
        elif self.dpsgd is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                summary |= self.dpsgd.privacy.summary()
            summary["target_epsilon"] = self.config.target_epsilon
            summary["step_limit"] = self._step_limit
            summary["budget_spent"] = self.state_name() == "budget_spent"
        self._summary_cache = (spent, summary)
        return summary

    def _describe(self) -> str:
        s = self.summary()
        if self.mode == "exchange":
            budget = s["epsilon_budget"]
            return (
                f"exchange (site level): epsilon {s['epsilon']:.3f} of "
                f"{'no limit' if budget is None else f'{budget:g}'} at delta {s['delta']:g} "
                f"after {s['releases']} releases, noise multiplier {s['noise_multiplier']:.3g}, "
                f"clip {s['clip_norm']:g}" + ("; budget spent" if s["stopped_sending"] else "")
            )
        return (
            f"dpsgd (per image): epsilon {s['epsilon']:.3f} at delta {s['delta']:g} after "
            f"{s['steps']} steps (limit {s['step_limit'] or 'none'}), noise multiplier "
            f"{s['noise_multiplier']:.3g}, clip {s['clip_norm']:g}, sample rate "
            f"{s['sample_rate']:.3g}"
        )
