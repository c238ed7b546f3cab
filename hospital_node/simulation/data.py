"""The simulation's data: each hospital's splits, pooled validation, the common test set."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from consensus.topology import Topology, from_edges, full, random_regular, ring
from data_tools.labels import COMMON_TEST_SITE, FINDINGS, LABELS_FILENAME
from hospital_node.data.attributes import ImageAttributes, read_attributes
from hospital_node.data.site import SiteData, load_site
from hospital_node.simulation.config import SimulationConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSet:
    """Images, labels and patient ids of one evaluation set (e.g. pooled validation splits)."""

    images: torch.Tensor
    labels: torch.Tensor
    patient_ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.patient_ids)


def pooled(parts: list[SiteData]) -> EvalSet:
    """The union of several sites' splits, in site order (the hospitals' validation data)."""
    parts = [p for p in parts if len(p) > 0]
    if not parts:
        return EvalSet(torch.zeros(0, 1, 1, 1), torch.zeros(0, len(FINDINGS)), ())
    images = torch.cat([p.images[torch.arange(len(p))] for p in parts])
    labels = torch.cat([p.labels for p in parts])
    return EvalSet(images, labels, tuple(i for p in parts for i in p.patient_ids))


@dataclass(frozen=True)
class SimData:
    """Every hospital's splits plus the common held-out test set, decoded once."""

    sites: tuple[str, ...]
    train: dict[str, SiteData]
    local_test: dict[str, SiteData]
    common: SiteData
    eval_subset: torch.Tensor  # indices into `common` for intermediate evaluations
    validation: EvalSet  # the hospitals' validation splits, pooled: what tuning and selection read
    # subgroup attributes of every test set, keyed by SiteData.site (the folder's name)
    attributes: dict[str, ImageAttributes] = field(default_factory=dict)

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
    data_config = config.data
    sites = discover_sites(data_dir)
    train, local_test, val = {}, {}, []
    for site in sites:
        loaded = load_site(data_dir / site, data_config, progress=progress)
        if loaded.report.skipped:
            log.warning("%s", loaded.report.summary())
        train[site] = loaded.subset("train")
        local_test[site] = loaded.subset("test")
        val.append(loaded.subset("val"))
    common = load_site(data_dir / COMMON_TEST_SITE, data_config, progress=progress)
    generator = torch.Generator().manual_seed(config.training.seed)
    n_eval = min(config.evaluation.images, len(common))
    subset = torch.randperm(len(common), generator=generator)[:n_eval].sort().values
    attributes = {
        test.site: read_attributes(data_dir / test.site, test.sop_instance_uids)
        for test in (common, *local_test.values())
    }
    return SimData(tuple(sites), train, local_test, common, subset, pooled(val), attributes)


def build_graph(sites: tuple[str, ...], config: SimulationConfig) -> Topology:
    """The configured network over the hospitals (ring by default, as in the ECL paper)."""
    net = config.network
    if net.topology == "ring":
        return ring(sites)
    if net.topology == "full":
        return full(sites)
    if net.topology == "regular":
        return random_regular(sites, degree=net.degree, seed=config.training.seed)
    if net.topology == "edges":
        return from_edges(sites, [tuple(e.split("-", 1)) for e in net.edges])
    raise ValueError(f"network.topology={net.topology!r}: choose ring, full, regular or edges")
