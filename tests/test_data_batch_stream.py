"""BatchStream: exact resume, disjoint rank shards covering each epoch, short datasets, flips, errors."""
import pytest
import torch

from imm_ext.data import ArrayDataset, BatchStream


def indexed_images(n, channels=1, side=4):
    """Images whose pixel values encode the sample index (x[i] = i everywhere except a marked column)."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).repeat(1, channels, side, side)
    x[..., 0] += 0.5  # asymmetric, so a horizontal flip is visible
    return ArrayDataset(x, torch.arange(n) % 3, name="indexed", split="train", num_classes=3)


def sample_ids(x):
    return x.flatten(1).amin(1).long()


def test_resumed_stream_yields_the_same_batches_as_an_uninterrupted_one():
    data = indexed_images(37)
    reference = BatchStream(data, 8, seed=5, hflip=True)
    expected = [next(reference) for _ in range(12)]  # 96 samples: crosses two epoch boundaries
    stream = BatchStream(data, 8, seed=5, hflip=True)
    for _ in range(5):
        next(stream)
    state = stream.state_dict()
    resumed = BatchStream(data, 8, seed=5, hflip=True)
    resumed.load_state_dict(state)
    for (x, labels), (x_expected, labels_expected) in zip((next(resumed) for _ in range(7)), expected[5:]):
        assert torch.equal(x, x_expected) and torch.equal(labels, labels_expected)


def test_each_epoch_is_a_permutation_and_epochs_differ():
    data = indexed_images(40)
    stream = BatchStream(data, 10, seed=0)
    epochs = [torch.cat([sample_ids(next(stream)[0]) for _ in range(4)]) for _ in range(2)]
    for ids in epochs:
        assert sorted(ids.tolist()) == list(range(40))
    assert not torch.equal(epochs[0], epochs[1])
    assert not torch.equal(sample_ids(next(BatchStream(data, 10, seed=1))[0]), epochs[0][:10])


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_get_disjoint_shards_that_cover_the_epoch(drop_last):
    data, world = indexed_images(23), 4
    per_rank = BatchStream(data, 1, seed=2, world_size=world, drop_last=drop_last).samples_per_rank
    assert per_rank == (5 if drop_last else 6)
    # A first batch of per_rank samples is exactly the rank's shard of epoch 0.
    shards = [sample_ids(next(BatchStream(data, per_rank, seed=2, rank=r, world_size=world, drop_last=drop_last))[0])
              for r in range(world)]
    union = torch.cat(shards)
    if drop_last:
        assert len(set(union.tolist())) == len(union) == 20  # disjoint; 3 of 23 dropped this epoch
    else:
        assert set(union.tolist()) == set(range(23))  # all covered; one sample repeated


def test_a_dataset_shorter_than_a_batch_cycles_epochs():
    data = indexed_images(3)
    x, labels = next(BatchStream(data, 10, seed=0))
    ids = sample_ids(x)
    assert len(ids) == 10 and labels.tolist() == (ids % 3).tolist()
    for start in (0, 3, 6):
        assert sorted(ids[start:start + 3].tolist()) == [0, 1, 2]  # each run of 3 is one whole epoch


def test_flips_are_horizontal_seeded_per_rank_and_about_half():
    data = indexed_images(400)
    x, _ = next(BatchStream(data, 400, seed=0, hflip=True))
    flipped = x[:, 0, 0, -1] > x[:, 0, 0, 1]  # the marked column moved from left to right
    assert torch.equal(x[flipped].flip(-1)[..., 0], x[flipped][..., -1])
    assert 150 < int(flipped.sum()) < 250
    unflipped, _ = next(BatchStream(data, 400, seed=0))
    assert torch.equal(sample_ids(unflipped), sample_ids(x))  # flips do not change the order


def test_generic_datasets_are_stacked_item_by_item():
    data = indexed_images(12)
    generic = torch.utils.data.TensorDataset(*data.tensors())
    a, b = next(BatchStream(data, 7, seed=4)), next(BatchStream(generic, 7, seed=4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_arguments_and_mismatched_state():
    data = indexed_images(10)
    for kwargs, match in [(dict(batch_size=0), "batch_size"), (dict(world_size=2, rank=2), "rank must be <"),
                          (dict(world_size=0), "world_size"), (dict(seed=-1), "seed"), (dict(hflip=1), "hflip")]:
        with pytest.raises((ValueError, TypeError), match=match):
            BatchStream(data, **{"batch_size": 4, "seed": 0, **kwargs})
    with pytest.raises(ValueError, match="fewer than world_size"):
        BatchStream(indexed_images(2), 1, seed=0, rank=0, world_size=3)
    with pytest.raises(ValueError, match="hflip needs image samples"):
        BatchStream(ArrayDataset(torch.zeros(5, 2), torch.zeros(5, dtype=torch.int64), name="t", split="train",
                                 num_classes=0), 2, seed=0, hflip=True)
    with pytest.raises(TypeError, match="map-style"):
        BatchStream(iter([1, 2]), 2, seed=0)
    state = BatchStream(data, 4, seed=0).state_dict()
    with pytest.raises(ValueError, match="seed"):
        BatchStream(data, 4, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="position"):
        BatchStream(data, 4, seed=0).load_state_dict({**state, "position": 10})
    with pytest.raises(ValueError, match="lacks"):
        BatchStream(data, 4, seed=0).load_state_dict({"epoch": 0})
