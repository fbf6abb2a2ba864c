"""kdkit.data.transforms: the batched form of the default pipelines gives, batch for batch, the tensors the
per-image pipeline gives from the same RNG state, and leaves the RNG where the per-image pipeline leaves it;
any other transform is still applied image by image."""
from __future__ import annotations

import pickle

import pytest
import torch
from test_data_cifar import write_cifar100
from test_data_fashion_mnist import write_dataset
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from kdkit.data.cifar import CIFAR100Dataset
from kdkit.data.mnist import FashionMNIST
from kdkit.data.shapes import ShapesDataset
from kdkit.data.transforms import batch_form, build_transform
from kdkit.engine.data import WithIndex, split_train_val


def _datasets(root):
    write_dataset(root / "fmnist", gz=False)
    write_cifar100(root, n_train=40, n_test=12)
    return {
        "fashion_mnist-weak": FashionMNIST("train", str(root / "fmnist"), augment="weak"),
        "fashion_mnist-test": FashionMNIST("test", str(root / "fmnist")),
        "fashion_mnist-unnormalised": FashionMNIST("train", str(root / "fmnist"), augment="weak", normalize=False),
        "cifar100-weak": CIFAR100Dataset("train", str(root), augment="weak"),
        "shapes-weak": ShapesDataset("train", train_per_class=4, augment="weak"),
        "shapes-none": ShapesDataset("test", test_per_class=4),
    }


def _per_image(dataset, indices):
    return [dataset[i] for i in indices]


@pytest.mark.parametrize("name", ["fashion_mnist-weak", "fashion_mnist-test", "fashion_mnist-unnormalised",
                                  "cifar100-weak", "shapes-weak", "shapes-none"])
def test_a_batch_is_bit_identical_to_the_images_one_by_one_and_draws_the_same_randoms(tmp_path, name):
    dataset = _datasets(tmp_path)[name]
    assert batch_form(dataset.transform) is not None, "the default pipeline has a batched form"
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(3)).tolist()
    indices = indices + indices[:5]  # a sample twice in one batch draws twice
    torch.manual_seed(11)
    one_by_one, after_one_by_one = _per_image(dataset, indices), torch.rand(4)
    torch.manual_seed(11)
    batched, after_batched = dataset.__getitems__(indices), torch.rand(4)
    assert torch.equal(after_one_by_one, after_batched)
    assert len(batched) == len(indices)
    for (want, want_label), (got, got_label) in zip(one_by_one, batched):
        assert got.dtype == want.dtype == torch.float32 and got.shape == want.shape
        assert torch.equal(got, want) and got_label == want_label
    if "weak" in name:  # the augmentation did something: not every image is its unaugmented self
        plain = dataset.with_augment("none")
        assert any(not torch.equal(got, plain[i][0]) for (got, _), i in zip(batched, indices))


def test_flips_and_every_crop_offset_occur_and_match(tmp_path):
    # 400 draws of a 28-pixel image padded by 3: each of the 7 x 7 offsets and both flips, compared image by image
    dataset = _datasets(tmp_path)["fashion_mnist-weak"]
    indices = [0] * 400
    torch.manual_seed(0)
    one_by_one = torch.stack([image for image, _ in _per_image(dataset, indices)])
    torch.manual_seed(0)
    batched = torch.stack([image for image, _ in dataset.__getitems__(indices)])
    assert torch.equal(one_by_one, batched)
    assert len({tuple(image.flatten()[:200].tolist()) for image in batched}) > 60


def test_a_loader_through_the_engine_wrappers_yields_the_per_image_batches(tmp_path):
    dataset = _datasets(tmp_path)["fashion_mnist-weak"]
    train, _ = split_train_val(dataset, 0.25, seed=0, eval_dataset=dataset.with_augment("none"))
    per_image = dataset.with_transform(build_transform("weak", 28, dataset.mean, dataset.std, native_size=28))
    per_image.transform.transforms.append(v2.Identity())  # a changed pipeline: batch_form gives it up
    assert batch_form(per_image.transform) is None
    train_per_image, _ = split_train_val(per_image, 0.25, seed=0, eval_dataset=per_image.with_augment("none"))
    batches = []
    for data in (train, train_per_image):
        torch.manual_seed(4)
        batches.append(list(DataLoader(WithIndex(data), batch_size=8, shuffle=False)))
    for (x, y, i), (x1, y1, i1) in zip(*batches):
        assert torch.equal(x, x1) and torch.equal(y, y1) and torch.equal(i, i1)
    assert sum(len(b[0]) for b in batches[0]) == len(train)


def test_a_dataset_with_the_batched_form_pickles_for_spawned_loader_workers(tmp_path):
    dataset = _datasets(tmp_path)["fashion_mnist-weak"]
    copy = pickle.loads(pickle.dumps(dataset))
    torch.manual_seed(2)
    want = dataset.__getitems__([3, 1, 2])
    torch.manual_seed(2)
    got = copy.__getitems__([3, 1, 2])
    assert batch_form(copy.transform) is not None and all(torch.equal(a[0], b[0]) for a, b in zip(want, got))


def test_a_transform_of_the_users_own_is_applied_image_by_image(tmp_path):
    dataset = _datasets(tmp_path)["shapes-weak"]
    seen = []

    def own(image):
        seen.append(tuple(image.shape))
        return image.float()

    custom = dataset.with_transform(own)
    assert batch_form(custom.transform) is None
    items = custom.__getitems__([0, 1, 2])
    assert seen == [(3, 32, 32)] * 3 and all(torch.equal(x, custom[i][0]) for (x, _), i in zip(items, [0, 1, 2]))


@pytest.mark.parametrize("augment, image_size, native_size", [("strong", 32, 32), ("weak", 32, 28),
                                                              ("none", 32, 28), ("weak", 96, 96), ("none", 224, None)])
def test_pipelines_it_cannot_promise_bit_identical_have_no_batched_form(augment, image_size, native_size):
    # AutoAugment's operations, resizing and large-image augmentation stay per image
    assert batch_form(build_transform(augment, image_size, native_size=native_size)) is None
