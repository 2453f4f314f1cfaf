"""Which examples a run trains on, in which order, and how they become tensors.

The training subset is the first ``n_train`` examples of a shuffle of the
train split seeded with ``train.seed``, so every data size of a search is a
prefix of the same order (D1 is inside D2). Batches walk through one
seeded permutation of the subset per epoch; a batch may straddle two
epochs. The order depends only on the seed and the sample position, so a
resumed run continues with exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mars_core.model.prompting import EncodedExample, encode_examples

# Arbitrary distinct offsets, so the subset shuffle and the epoch orders of
# one seed use unrelated generator streams.
_SUBSET_STREAM = 0x5EED
_EPOCH_STREAM = 0xE90C


def subset_indices(n_available: int, n_train: int, seed: int) -> list[int]:
    """Indices into the train split of the first ``n_train`` examples of its seeded shuffle."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + _SUBSET_STREAM)
    return torch.randperm(n_available, generator=generator)[:n_train].tolist()


def epoch_order(n_train: int, seed: int, epoch: int) -> list[int]:
    """Positions in the subset in the order epoch ``epoch`` visits them."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + _EPOCH_STREAM + 7919 * epoch)
    return torch.randperm(n_train, generator=generator).tolist()


class SampleStream:
    """Batches of subset positions, addressed by samples seen so far."""

    def __init__(self, n_train: int, seed: int) -> None:
        self.n_train = n_train
        self.seed = seed
        self._orders: dict[int, list[int]] = {}

    def positions(self, start: int, size: int) -> list[int]:
        """Subset positions of samples ``start .. start + size - 1`` of the stream."""
        out = []
        for sample in range(start, start + size):
            epoch, offset = divmod(sample, self.n_train)
            if epoch not in self._orders:
                self._orders = {epoch: epoch_order(self.n_train, self.seed, epoch)}
            out.append(self._orders[epoch][offset])
        return out


def encode_vqa(processor, examples: Sequence) -> list[EncodedExample]:
    """Encode ``VqaExample`` objects with answer-only labels."""
    return encode_examples(
        processor,
        images=[example.image for example in examples],
        questions=[example.question for example in examples],
        answers=[example.answer for example in examples],
        question_types=[example.question_type for example in examples],
        histories=[list(example.history) for example in examples],
    )
