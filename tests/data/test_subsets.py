"""Classes and class-balanced subsets (the TrainConfig keys classes, train_images and
train_per_class that `vitlab study` builds its points from)."""

import pytest
import torch

from vitlab.data.datasets import load_data
from vitlab.data.sets import ArraySet, DatasetError, FileSet
from vitlab.data.subsets import balanced_subset, class_indices, select_classes


def labelled(counts: list[int]) -> ArraySet:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = torch.arange(len(labels), dtype=torch.int32).to(torch.uint8).view(-1, 1, 1, 1)
    return ArraySet(images.expand(-1, 1, 2, 2).clone(), labels)


def test_per_class_takes_k_of_every_class():
    sub = balanced_subset(labelled([30, 20, 40]), seed=0, per_class=7)
    assert torch.bincount(sub.targets).tolist() == [7, 7, 7]


def test_total_is_shared_as_equally_as_the_classes_allow():
    assert torch.bincount(
        balanced_subset(labelled([30, 30, 30]), 0, total=10).targets
    ).tolist() == [4, 3, 3]
    # a class with too few images gives what it has; the others make up the rest
    counts = torch.bincount(balanced_subset(labelled([2, 30, 30]), 0, total=20).targets)
    assert counts.tolist() == [2, 9, 9]


def test_subsets_of_one_seed_are_nested_and_seeds_differ():
    data = labelled([50, 50])
    small = balanced_subset(data, seed=3, total=10)
    large = balanced_subset(data, seed=3, total=40)
    other = balanced_subset(data, seed=4, total=10)
    as_set = lambda s: set(s.images[:, 0, 0, 0].tolist())  # noqa: E731 (each image is its index)
    assert as_set(small) < as_set(large)
    assert as_set(small) != as_set(other)


def test_file_sets_are_subset_by_their_own_labels():
    files = FileSet(lambda i: None, torch.tensor([0, 1, 0, 1, 0, 1]), None).subset(
        torch.tensor([0, 1, 2, 3])
    )
    assert torch.bincount(balanced_subset(files, 0, per_class=1).targets).tolist() == [1, 1]


def test_too_many_images_or_too_many_per_class_say_how_many_there_are():
    with pytest.raises(DatasetError, match=r"train_images=100 is more than the 60 training images"):
        balanced_subset(labelled([30, 30]), 0, total=100)
    with pytest.raises(DatasetError, match=r"class 'b' has only 20 .* at most 20"):
        balanced_subset(labelled([30, 20]), 0, per_class=25, names=("a", "b"))


def test_select_classes_by_name_or_index_relabels_in_the_order_given():
    data = load_data("digits")
    part = select_classes(data, ["7", 2])
    assert part.class_names == ("7", "2")
    for split in (part.train, part.test):
        assert set(split.targets.tolist()) == {0, 1}
    original = data.train.targets
    assert len(part.train) == int(((original == 7) | (original == 2)).sum())
    sevens = data.train.images[original == 7]
    assert torch.equal(part.train.images[part.train.targets == 0], sevens)


@pytest.mark.parametrize(
    ("wanted", "message"),
    [
        (["cat"], "no class named 'cat'"),
        ([12], "index 12 is out of range"),
        ([1, "1"], "named twice"),
    ],
)
def test_bad_class_names_are_errors(wanted, message):
    with pytest.raises(DatasetError, match=message):
        class_indices(tuple(str(i) for i in range(10)), wanted)
