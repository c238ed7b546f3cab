"""The node's periodic evaluation: AUCs every time, a full review every n-th, on real DICOM."""

from __future__ import annotations

import torch
from node_helpers import IMAGE_SIZE

from hospital_node.data.site import DataConfig, load_site
from hospital_node.evaluation.config import EvaluationConfig
from hospital_node.node.review import NodeReviewer


def _predict(images) -> torch.Tensor:
    """A fixed, image-dependent scorer (no training needed to exercise the evaluation)."""
    brightness = images[:].mean(dim=(1, 2, 3))[:, None]  # the cached images as one batch
    return torch.sigmoid(10 * (brightness - brightness.mean()) * torch.linspace(-1, 1, 14))


def _reviewer(node_data, ci_every: int) -> NodeReviewer:
    site = load_site(
        node_data / "N1", DataConfig(image_size=IMAGE_SIZE, cache_dir=node_data / "cache")
    )
    config = EvaluationConfig(every=10, ci_every=ci_every, bootstrap=30)
    return NodeReviewer.for_site(
        name="N1", site_dir=node_data / "N1", test=site.subset("test"), config=config, seed=0
    )


def test_every_nth_evaluation_is_a_full_review_from_the_first(node_data):
    reviewer = _reviewer(node_data, ci_every=3)

    results = [reviewer.evaluate(step, _predict) for step in range(10, 80, 10)]

    assert [r.review is not None for r in results] == [True, False, False, True, False, False, True]
    assert all(r.evaluation.ci is None for r in results if r.review is None)
    review = results[0].review
    assert review.evaluation.ci is not None and review.evaluation.n_images == len(reviewer.test)
    attributes = {s.attribute for s in review.subgroups}
    assert attributes == {"sex", "age_band", "view_position"}
    sexes = {s.group for s in review.subgroups if s.attribute == "sex"}
    assert sexes <= {"F", "M"} and sexes  # read from the phantoms' DICOM headers
    assert all(r.seconds > 0 for r in results)


def test_a_review_is_reproducible_and_never_happens_with_ci_every_0(node_data):
    first = _reviewer(node_data, ci_every=1).evaluate(40, _predict)
    again = _reviewer(node_data, ci_every=1).evaluate(40, _predict)
    never = _reviewer(node_data, ci_every=0)

    assert first.evaluation.ci == again.evaluation.ci  # seeded by (seed, step)
    assert all(never.evaluate(s, _predict).review is None for s in (10, 20, 30))
