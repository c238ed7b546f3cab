"""The N-hospital simulation: every method on the same data, model, init and budget."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from consensus.topology import Topology
from data_tools.labels import FINDINGS
from hospital_node.checkpoint import load_latest_checkpoint, save_checkpoint
from hospital_node.configio import to_dict
from hospital_node.data.site import SiteData, union_images
from hospital_node.evaluation.metrics import consensus_residual, evaluate_scores
from hospital_node.evaluation.review import review_scores
from hospital_node.simulation.budget import method_plan, with_data_budget
from hospital_node.simulation.config import SimulationConfig
from hospital_node.simulation.data import SimData, build_graph
from hospital_node.simulation.engine import MethodRun, NodeTrainData
from hospital_node.simulation.selection import BestModels, validation_aucs
from hospital_node.store.schema import SiteInfo
from hospital_node.store.writer import ResultsStore
from hospital_node.training.model import initial_model

log = logging.getLogger(__name__)

CENTRAL_SITE = "all"
ProgressFactory = Callable[[str, int], "object"]


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
        # training.steps from the data when only training.epochs is set (ecl-sim's default)
        self.config = with_data_budget(config, [len(data.train[s]) for s in data.sites])
        self.data = data
        self.store = store
        self.run_id = run_id
        self.checkpoint_dir = checkpoint_dir
        self.progress = progress
        self.graph = build_graph(data.sites, config)
        # One initial model for every method and hospital: differences come from the method alone.
        self.init_module = initial_model(config.model, seed=config.training.seed)

    def topology(self) -> dict:
        """The network as the results store records it."""
        return {
            "kind": self.config.network.topology,
            "nodes": list(self.graph.nodes),
            "edges": [list(e) for e in self.graph.edges],
        }

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

    def run_method(self, method: str) -> list[float | None]:
        """Train `method` to the configured budget, evaluating and checkpointing as it goes.

        Returns each model's pooled-validation mean AUC as reported: at its best evaluation
        with `evaluation.select_best`, else at the end (what `--tune` compares).
        """
        run = self._make_run(method)
        best = BestModels(len(run.graph.nodes))
        ckpt_dir = self.checkpoint_dir / method
        restored = load_latest_checkpoint(ckpt_dir)
        if restored is not None:
            _, state = restored
            run.load_state_dict(state)
            if "best" in state:  # checkpoints of earlier versions have none
                best.load_state_dict(state["best"])
            self.store.truncate_after(self.run_id, method, self._display_step(run))
            log.info("%s: resumed at step %d", method, self._display_step(run))
        every, ckpt_every = self.config.evaluation.every, self.config.training.checkpoint_every
        total = run.steps * len(run.graph.nodes)
        bar = self.progress(method, run.steps) if self.progress else None
        evals = set(range(every, run.steps, every)) if every else set()
        marks = sorted({*evals, *range(ckpt_every, run.steps, ckpt_every), run.steps})
        started = time.perf_counter()
        for mark in marks:
            target = mark * len(run.graph.nodes)
            if sum(run.steps_done) >= min(target, total):
                continue
            run.advance(min(target, total))
            step = self._display_step(run)
            if bar is not None:
                bar.update(step - bar.n)
            if mark in evals:
                self._evaluate_progress(method, run, step, time.perf_counter() - started)
                self._validate(method, run, step, best)
            if mark % ckpt_every == 0 or mark == run.steps:
                save_checkpoint(ckpt_dir, step, {**run.state_dict(), "best": best.state_dict()})
        final = self._validate(method, run, self._display_step(run), best)
        if self.config.evaluation.select_best:
            self._restore_best(method, run, best)
            final = [None if math.isinf(s) else s for s in best.scores]
        self._evaluate_final(method, run, time.perf_counter() - started)
        run.close()
        if bar is not None:
            bar.close()
        return final

    # --- helpers --------------------------------------------------------------------------------
    def _make_run(self, method: str) -> MethodRun:
        config, steps = method_plan(self.config, method, hospitals=len(self.data.sites))
        if method == "centralized":
            union = [self.data.train[s] for s in self.data.sites]
            images = union_images([d.images for d in union])  # a view: no copy of the sites
            train = [NodeTrainData(CENTRAL_SITE, images, torch.cat([d.labels for d in union]))]
            graph = Topology(nodes=(CENTRAL_SITE,), edges=())
        else:
            train = [
                NodeTrainData(s, self.data.train[s].images, self.data.train[s].labels)
                for s in self.data.sites
            ]
            graph = self.graph
        speeds = None if method == "centralized" else (config.network.speeds or None)
        engine = MethodRun
        if config.backend == "ray":  # imported only then: Ray is an optional extra
            from hospital_node.simulation.ray_engine import RayMethodRun as engine
        return engine(
            method=method,
            graph=graph,
            train=train,
            config=config,
            init_module=self.init_module,
            steps=steps,
            speeds=speeds,
        )

    def _validate(
        self, method: str, run: MethodRun, step: int, best: BestModels
    ) -> list[float | None]:
        """Each model's mean AUC on the pooled validation splits: logged, offered to `best`."""
        scores = validation_aucs(run.predict(self.data.validation.images), self.data.validation)
        for site, score in zip(run.graph.nodes, scores, strict=True):
            if score is not None:
                self.store.log_metrics(self.run_id, method, site, step, {"val_auc": score})
        best.offer(scores, step, run.node_state)
        return scores

    def _restore_best(self, method: str, run: MethodRun, best: BestModels) -> None:
        """Best-checkpoint selection: each model as it was at its best validation AUC."""
        for i, site in enumerate(run.graph.nodes):
            if best.states[i] is not None:
                run.stack.load_node_state(i, best.states[i])
                metric = {"selected_step": float(best.steps[i])}
                self.store.log_metrics(self.run_id, method, site, self._display_step(run), metric)

    def _model_record(self) -> dict:
        """The model config as trained: the data's resolution is the one the app must feed it."""
        return {**to_dict(self.config.model), "image_size": self.config.data.image_size}

    def _display_step(self, run: MethodRun) -> int:
        """Progress in local steps per hospital (`same` centralized: its steps / hospitals)."""
        same = run.method == "centralized" and self.config.centralized_batch == "same"
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
        rng = np.random.default_rng(self.config.training.seed)
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
            local_probs = run.predict_node(node, test.images).numpy()
            self._log_final(method, site, step, "local", test, local_probs, rng)
        self._log_network_state(method, run, step, elapsed)
        self.store.log_metrics(self.run_id, method, CENTRAL_SITE, step, {"finished": 1.0})

    def _log_final(self, method, site, step, test_set, data: SiteData, probs, rng) -> None:
        """AUC with CIs, ROC, calibration and subgroups of one model on one test set."""
        attributes = self.data.attributes.get(data.site)
        review = review_scores(
            data.labels.numpy(),
            probs,
            list(data.patient_ids),
            groups=attributes.groups() if attributes is not None else None,
            rng=rng,
            n_boot=self.config.evaluation.bootstrap,
            n_bins=self.config.evaluation.calibration_bins,
        )
        self.store.log_review(self.run_id, method, site, step, test_set, review, is_final=True)


def method_finished(store: ResultsStore, run_id: str, method: str) -> bool:
    """True once the method's final evaluation is in the store."""
    frame = store.metrics(run_id, names=["finished"], method=method)
    return len(frame) > 0
