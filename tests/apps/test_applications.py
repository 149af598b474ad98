"""Applications as label operations: one-to-one links, painting, boxes, instance masks."""
import numpy as np
import pytest
import torch

from amlight.modules.categorical_cost import categorical_cost
from amlight.apps.applications import box_mask, instance_mask, link_regions, paint_region


def _scene():
    labels = torch.zeros(8, 8, dtype=torch.long)
    labels[4:, :] = 1  # road
    labels[5:7, 1:3] = 2  # car A
    labels[5:7, 5:7] = 2  # car B
    return labels


def test_a_link_pairs_only_its_two_regions():
    exemplar, target = _scene(), _scene()
    ex_car_a = torch.zeros(8, 8, dtype=torch.bool)
    ex_car_a[5:7, 1:3] = True
    tgt_car_b = torch.zeros(8, 8, dtype=torch.bool)
    tgt_car_b[5:7, 5:7] = True
    t_match, x_match = link_regions(target, exemplar, [(ex_car_a, tgt_car_b)], num_classes=3)
    assert set(t_match[tgt_car_b].tolist()) == {3} and set(x_match[ex_car_a].tolist()) == {3}
    cost = categorical_cost(t_match[None], x_match[None], (8, 8))[0]
    rows, cols = tgt_car_b.flatten(), ex_car_a.flatten()
    # Target car B sees exemplar car A and nothing else; the other car pairs only with the other car.
    assert cost[rows][:, cols].all() and not cost[rows][:, ~cols].any()
    other_car = (target == 2).flatten() & ~rows
    assert cost[other_car][:, (exemplar == 2).flatten() & ~cols].all()
    assert not cost[other_car][:, cols].any()
    # The inputs are untouched (structure guidance keeps the true classes).
    assert torch.equal(target, _scene()) and torch.equal(exemplar, _scene())


def test_links_skip_the_ignore_label_and_accept_numpy_masks():
    exemplar, target = _scene(), _scene()
    masks = [(np.eye(8, dtype=bool), np.eye(8, dtype=bool)), (np.fliplr(np.eye(8, dtype=bool)), np.ones((8, 8)))]
    t_match, x_match = link_regions(target, exemplar, masks, num_classes=254, ignore_index=255)
    assert set(x_match.unique().tolist()) >= {254, 256} and 255 not in x_match.unique().tolist()


def test_link_errors_name_the_problem():
    exemplar, target = _scene(), _scene()
    with pytest.raises(ValueError, match="link 0: target mask is empty"):
        link_regions(target, exemplar, [(exemplar == 2, torch.zeros(8, 8, dtype=torch.bool))], 3)
    with pytest.raises(ValueError, match=r"link 0: exemplar mask has size \(4, 4\)"):
        link_regions(target, exemplar, [(torch.ones(4, 4), target == 2)], 3)
    with pytest.raises(ValueError, match="at least one"):
        link_regions(target, exemplar, [], 3)


def test_paint_and_box():
    labels = _scene()
    edited = paint_region(labels, 2, box_mask(labels.shape, (2, 1, 5, 3)))
    assert (edited[1:3, 2:5] == 2).all() and (edited[0] == 0).all()
    assert torch.equal(labels, _scene())  # a copy, not in place
    clipped = box_mask((8, 8), (6, 6, 20, 20))
    assert clipped.sum() == 4
    with pytest.raises(ValueError, match="outside"):
        box_mask((8, 8), (10, 10, 12, 12))
    with pytest.raises(ValueError, match="empty"):
        box_mask((8, 8), (3, 3, 3, 5))
    with pytest.raises(ValueError, match="class 7 is outside"):
        paint_region(labels, 7, clipped, num_classes=3)


def test_instance_masks():
    instances = np.zeros((8, 8), np.int32)
    instances[2:4, 2:4] = 26001
    assert instance_mask(instances, 26001).sum() == 4
    with pytest.raises(ValueError, match="no instance 7; ids present: \\[0, 26001\\]"):
        instance_mask(instances, 7)
