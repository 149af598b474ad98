import torch

from amlight.modules import categorical_cost, resize_labels


def test_majority_downsample_never_invents_classes():
    # Stripes of classes 1 and 3: a bilinear blend of their values would produce 2 at the boundaries.
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[:, :, :5] = 1
    labels[:, :, 5:11] = 3
    labels[:, :, 11:] = 255
    for size in [(8, 8), (4, 4), (2, 2), (5, 7), (3, 3)]:
        out = resize_labels(labels, size)
        assert out.shape == (1, *size)
        assert set(out.unique().tolist()) <= {1, 3, 255}


def test_majority_picks_the_most_frequent_class_per_block():
    labels = torch.tensor([[[1, 1, 2, 2], [1, 2, 2, 2], [4, 4, 255, 255], [4, 0, 255, 7]]])
    out = resize_labels(labels, (2, 2))
    # Bottom-right block is 3x ignore + 1x class 7: a real class wins over ignore.
    assert out.tolist() == [[[1, 2], [4, 7]]]


def test_cost_rows_are_target_positions_columns_exemplar_positions():
    # Target: class 1 on the left half, class 2 on the right. Exemplar: swapped.
    target = torch.ones(1, 4, 4, dtype=torch.long)
    target[:, :, 2:] = 2
    exemplar = 3 - target
    cost = categorical_cost(target, exemplar, (4, 4))
    assert cost.shape == (1, 16, 16)
    q = 0 * 4 + 0  # target pixel (0, 0): class 1
    expected = (exemplar.flatten(1) == 1)[0]
    assert torch.equal(cost[0, q], expected)
    # Exactly the exemplar's right half (where class 1 is), nowhere else.
    cols = cost[0, q].view(4, 4)
    assert cols[:, 2:].all() and not cols[:, :2].any()


def test_cost_ignore_matches_nothing():
    target = torch.full((1, 2, 2), 255, dtype=torch.long)
    target[0, 0, 0] = 1
    exemplar = torch.full((1, 2, 2), 255, dtype=torch.long)
    exemplar[0, 1, 1] = 1
    cost = categorical_cost(target, exemplar, (2, 2))
    assert cost[0, 0].tolist() == [False, False, False, True]
    assert not cost[0, 1:].any()
