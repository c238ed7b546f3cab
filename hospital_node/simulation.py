"""The N-hospital simulation: every method on the same data, model, init and budget."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from consensus.topology import Topology, from_edges, full, random_regular, ring
from data_tools.labels import COMMON_TEST_SITE, FINDINGS, LABELS_FILENAME
from hospital_node.checkpoint import load_latest_checkpoint, save_checkpoint
from hospital_node.configio import to_dict
from hospital_node.data import DataConfig, SiteData, load_site
from hospital_node.evaluate import consensus_residual, evaluate_scores, roc_curves
from hospital_node.model import build_model
from hospital_node.sim_config import SimulationConfig
from hospital_node.sim_engine import MethodRun, NodeTrainData
from hospital_node.store import ResultsStore
from hospital_node.store_schema import SiteInfo

log = logging.getLogger(__name__)

CENTRAL_SITE = "all"
ProgressFactory = Callable[[str, int], "object"]


@dataclass(frozen=True)
class SimData:
    """Every hospital's splits plus the common held-out test set, decoded once."""

    sites: tuple[str, ...]
    train: dict[str, SiteData]
    local_test: dict[str, SiteData]
    common: SiteData
    eval_subset: torch.Tensor  # indices into `common` for intermediate evaluations

    def absent_findings(self, site: str) -> list[str]:
        """Findings with no positive in the site's training split: what the site never saw."""
        counts = self.train[site].labels.sum(0)
        return [f for f, c in zip(FINDINGS, counts.tolist(), strict=True) if c == 0]


def discover_sites(data_dir: Path) -> list[str]:
    """Hospital folders (with a labels.csv) under `data_dir`, common_test excluded, in order."""
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"data folder {data_dir} does not exist; run `ecl-data synth --out {data_dir}`"
        )
    sites = [
        p.name
        for p in data_dir.iterdir()
        if (p / LABELS_FILENAME).is_file() and p.name != COMMON_TEST_SITE
    ]
    if not sites:
        raise FileNotFoundError(f"{data_dir} holds no site folders (SITE/{LABELS_FILENAME})")
    if not (data_dir / COMMON_TEST_SITE / LABELS_FILENAME).is_file():
        raise FileNotFoundError(
            f"{data_dir} has no {COMMON_TEST_SITE}/ (the common held-out test set)"
        )
    return sorted(sites, key=lambda s: (len(s), s))


def load_sim_data(data_dir: Path, config: SimulationConfig, *, progress: bool) -> SimData:
    """Decode (or read from cache) every site folder at the configured resolution."""
    cache = Path(config.data.cache_dir) if config.data.cache_dir else None
    data_config = DataConfig(image_size=config.data.image_size, cache_dir=cache)
    sites = discover_sites(data_dir)
    train, local_test = {}, {}
    for site in sites:
        loaded = load_site(data_dir / site, data_config, progress=progress)
        if loaded.report.skipped:
            log.warning("%s", loaded.report.summary())
        train[site] = loaded.subset("train")
        local_test[site] = loaded.subset("test")
    common = load_site(data_dir / COMMON_TEST_SITE, data_config, progress=progress)
    generator = torch.Generator().manual_seed(config.seed)
    n_eval = min(config.training.eval_images, len(common))
    subset = torch.randperm(len(common), generator=generator)[:n_eval].sort().values
    return SimData(tuple(sites), train, local_test, common, subset)


def build_graph(sites: tuple[str, ...], config: SimulationConfig) -> Topology:
    """The configured network over the hospitals (ring by default, as in the ECL paper)."""
    net = config.network
    if net.topology == "ring":
        return ring(sites)
    if net.topology == "full":
        return full(sites)
    if net.topology == "regular":
        return random_regular(sites, degree=net.degree, seed=config.seed)
    if net.topology == "edges":
        return from_edges(sites, [tuple(e.split("-", 1)) for e in net.edges])
    raise ValueError(f"network.topology={net.topology!r}: choose ring, full, regular or edges")


class Simulation:
    """Runs the configured methods one after another into one results store; resumable."""

    def __init__(
        self,
        config: SimulationConfig,
        *,
        data: SimData,
        store: ResultsStore,
        run_id: str,
        checkpoint_dir: Path,
        progress: ProgressFactory | None = None,
    ) -> None:
        self.config = config
        self.data = data
        self.store = store
        self.run_id = run_id
        self.checkpoint_dir = checkpoint_dir
        self.progress = progress
        self.graph = build_graph(data.sites, config)
        torch.manual_seed(config.seed)
        # One initial model for every method and hospital: differences come from the method alone.
        self.init_module = build_model(config.model)

    def record_setup(self) -> None:
        """Sites and the network layout, for the app's overview."""
        sites = []
        for site in self.data.sites:
            counts = self.data.train[site].labels.sum(0).int().tolist()
            sites.append(
                SiteInfo(
                    site,
                    n_train=len(self.data.train[site]),
                    n_val=0,
                    n_test=len(self.data.local_test[site]),
                    train_positives=dict(zip(FINDINGS, counts, strict=True)),
                )
            )
        total = sum(len(self.data.train[s]) for s in self.data.sites)
        pooled = (
            torch.cat([self.data.train[s].labels for s in self.data.sites]).sum(0).int().tolist()
        )
        sites.append(
            SiteInfo(
                CENTRAL_SITE,
                n_train=total,
                n_val=0,
                n_test=len(self.data.common),
                train_positives=dict(zip(FINDINGS, pooled, strict=True)),
                role="reference",
            )
        )
        self.store.add_sites(self.run_id, sites)

    def run_method(self, method: str) -> None:
        """Train `method` to the configured budget, evaluating and checkpointing as it goes."""
        run = self._make_run(method)
        ckpt_dir = self.checkpoint_dir / method
        restored = load_latest_checkpoint(ckpt_dir)
        if restored is not None:
            _, state = restored
            run.load_state_dict(state)
            self.store.truncate_after(self.run_id, method, self._display_step(run))
            log.info("%s: resumed at step %d", method, self._display_step(run))
        training = self.config.training
        total = run.steps * len(run.graph.nodes)
        bar = self.progress(method, run.steps) if self.progress else None
        marks = sorted(
            {
                *range(training.eval_every, run.steps, training.eval_every),
                *range(training.checkpoint_every, run.steps, training.checkpoint_every),
                run.steps,
            }
        )
        started = time.perf_counter()
        for mark in marks:
            target = mark * len(run.graph.nodes)
            if sum(run.steps_done) >= min(target, total):
                continue
            run.advance(min(target, total))
            step = self._display_step(run)
            if bar is not None:
                bar.update(step - bar.n)
            if mark % training.eval_every == 0 and mark != run.steps:
                self._evaluate_progress(method, run, step, time.perf_counter() - started)
            if mark % training.checkpoint_every == 0 or mark == run.steps:
                save_checkpoint(ckpt_dir, step, run.state_dict())
        self._evaluate_final(method, run, time.perf_counter() - started)
        if bar is not None:
            bar.close()

    # --- helpers --------------------------------------------------------------------------------
    def _make_run(self, method: str) -> MethodRun:
        config, steps = self.config, self.config.training.steps
        if method == "centralized":
            union = [self.data.train[s] for s in self.data.sites]
            images = torch.cat([d.images for d in union])
            train = [NodeTrainData(CENTRAL_SITE, images, torch.cat([d.labels for d in union]))]
            graph = Topology(nodes=(CENTRAL_SITE,), edges=())
            config, steps = self._centralized_budget()
        else:
            train = [
                NodeTrainData(s, self.data.train[s].images, self.data.train[s].labels)
                for s in self.data.sites
            ]
            graph = self.graph
        speeds = None if method == "centralized" else (config.network.speeds or None)
        return MethodRun(
            method=method,
            graph=graph,
            train=train,
            config=config,
            init_module=self.init_module,
            steps=steps,
            speeds=speeds,
        )

    def _centralized_budget(self) -> tuple[SimulationConfig, int]:
        """The reference gets the hospitals' gradient evaluations: V x batch or V x steps.

        `scaled` (default): as many updates as each hospital, each on a V-times larger batch
        from the union, i.e. what the hospitals together compute per round of local steps.
        `same`: V times as many updates at the hospitals' batch size (a stronger reference).
        """
        training, hospitals = self.config.training, len(self.data.sites)
        if training.centralized_batch == "scaled":
            batch = dataclasses.replace(training, batch_size=training.batch_size * hospitals)
            return dataclasses.replace(self.config, training=batch), training.steps
        return self.config, training.steps * hospitals

    def _model_record(self) -> dict:
        """The model config as trained: the data's resolution is the one the app must feed it."""
        model = dataclasses.replace(self.config.model, image_size=self.config.data.image_size)
        return to_dict(model)

    def _display_step(self, run: MethodRun) -> int:
        """Progress in local steps per hospital (`same` centralized: its steps / hospitals)."""
        same = run.method == "centralized" and self.config.training.centralized_batch == "same"
        scale = len(self.data.sites) if same else 1
        return int(round(run.mean_steps / scale))

    def _evaluate_progress(self, method: str, run: MethodRun, step: int, elapsed: float) -> None:
        common = self.data.common
        images = common.images[self.data.eval_subset]
        y_true = common.labels[self.data.eval_subset].numpy()
        probs = run.predict(images).numpy()
        patients = [common.patient_ids[i] for i in self.data.eval_subset.tolist()]
        for i, site in enumerate(run.graph.nodes):
            evaluation = evaluate_scores(y_true, probs[i], patients, with_ci=False)
            self.store.log_evaluation(self.run_id, method, site, step, "common", evaluation)
            self.store.log_metrics(
                self.run_id, method, site, step, {"train_loss": run.recent_loss[i]}
            )
        self._log_network_state(method, run, step, elapsed)

    def _log_network_state(self, method: str, run: MethodRun, step: int, elapsed: float) -> None:
        models = [run.node_state(i) for i in range(len(run.graph.nodes))]
        residual = consensus_residual(models) if len(models) > 1 else 0.0
        stats = run.transport.stats()
        self.store.log_metrics(
            self.run_id,
            method,
            CENTRAL_SITE,
            step,
            {
                "consensus_residual": residual,
                "messages": float(stats.messages_sent),
                "bytes": float(stats.bytes_sent),
                "wall_time_s": elapsed,
            },
        )
        for link in stats.links:
            self.store.set_exchange(
                self.run_id,
                method,
                link.sender,
                link.receiver,
                step,
                messages=link.messages_sent,
                n_bytes=link.bytes_sent,
                rejected=link.messages_rejected,
            )
        for i, (site, steps_done) in enumerate(zip(run.graph.nodes, run.steps_done, strict=True)):
            state, detail = run.privacy.node_state(i, finished=steps_done >= run.steps)
            self.store.set_node_status(self.run_id, method, site, steps_done, state, detail)
            privacy = run.privacy.status(i)  # epsilon spent so far, 'exhausted' once it stops
            if privacy is not None:
                self.store.set_privacy(self.run_id, method, site, privacy)
                spent = {"epsilon": privacy.epsilon}
                self.store.log_metrics(self.run_id, method, site, step, spent)

    def _evaluate_final(self, method: str, run: MethodRun, elapsed: float) -> None:
        step = self._display_step(run)
        rng = np.random.default_rng(self.config.seed)
        common = self.data.common
        probs = run.predict(common.images).numpy()
        for i, site in enumerate(run.graph.nodes):
            self._log_final(method, site, step, "common", common, probs[i], rng)
            self.store.save_model(
                self.run_id, method, site, step, self._model_record(), run.node_state(i)
            )
            self.store.set_node_status(self.run_id, method, site, run.steps_done[i], "finished")
        # Local test splits: each hospital's own model (for centralized: the one shared model).
        for i, site in enumerate(self.data.sites):
            test = self.data.local_test[site]
            if len(test) == 0:
                continue
            node = 0 if method == "centralized" else i
            local_probs = (
                run.model.predict(run.views[node], test.images.to(run.device)).cpu().numpy()
            )
            self._log_final(method, site, step, "local", test, local_probs, rng)
        self._log_network_state(method, run, step, elapsed)
        self.store.log_metrics(self.run_id, method, CENTRAL_SITE, step, {"finished": 1.0})

    def _log_final(self, method, site, step, test_set, data: SiteData, probs, rng) -> None:
        y_true = data.labels.numpy()
        evaluation = evaluate_scores(
            y_true,
            probs,
            list(data.patient_ids),
            with_ci=True,
            rng=rng,
            n_boot=self.config.training.bootstrap,
        )
        self.store.log_evaluation(
            self.run_id, method, site, step, test_set, evaluation, is_final=True
        )
        self.store.log_roc(self.run_id, method, site, step, test_set, roc_curves(y_true, probs))


def method_finished(store: ResultsStore, run_id: str, method: str) -> bool:
    """True once the method's final evaluation is in the store."""
    frame = store.metrics(run_id, names=["finished"], method=method)
    return len(frame) > 0
