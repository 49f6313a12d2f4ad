"""Masked-LM corruption: token masking as before, and whole-word masking with a "##" table.

Rows are synthetic: `<cls> a.. <sep> b.. <sep>` plus padding, over a vocabulary of ids
0..4 reserved and 5..VOCAB-1 words, where every fifth word id is a continuation piece.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertpretrain.data.masking import candidates, hashed_draws, mask_tokens, word_starts
from bertpretrain.data.vocab import CLS_ID, MASK_ID, PAD_ID, RESERVED, SEP_ID

VOCAB = 200
CONTINUATION = (torch.arange(VOCAB) >= len(RESERVED)) & (torch.arange(VOCAB) % 5 == 0)  # (V,)
PIECE = 10  # a continuation id
WORD = 11  # a word id


def previous_mask_tokens(tokens, segments, valid_lens, vocab_size, max_preds, generator):
    """The implementation before whole-word masking, kept verbatim as the reference."""
    n = len(tokens)
    candidate = candidates(segments, valid_lens)
    n_pred = torch.minimum(torch.round(0.15 * valid_lens).clamp(min=1), candidate.sum(1))
    keys = torch.rand(tokens.shape, generator=generator).masked_fill(~candidate, 2.0)
    chosen = keys.argsort(dim=1, stable=True)[:, :max_preds]
    real = torch.arange(max_preds) < n_pred[:, None]
    positions = torch.where(real, chosen, tokens.shape[1]).sort(dim=1).values
    positions = torch.where(real, positions, 0)
    labels = torch.where(real, tokens.gather(1, positions), 0)
    u = torch.rand((n, max_preds), generator=generator)
    random_words = torch.randint(len(RESERVED), vocab_size, (n, max_preds), generator=generator)
    corrupted = torch.where(u < 0.8, MASK_ID, torch.where(u < 0.9, random_words, labels))
    rows = torch.arange(n)[:, None].expand_as(real)
    out = tokens.clone()
    out[rows[real], positions[real]] = corrupted[real].to(out.dtype)
    return out, positions, labels, real.float()


def make_rows(n: int, length: int, seed: int):
    """(n, length) tokens, segments, and (n,) valid lengths of random sentence pairs."""
    g = torch.Generator().manual_seed(seed)
    la = torch.randint(1, length // 2, (n,), generator=g)
    lb = torch.randint(1, length // 2 - 2, (n,), generator=g)
    valid = la + lb + 3
    cols = torch.arange(length)
    rows = torch.arange(n)
    tokens = torch.randint(len(RESERVED), VOCAB, (n, length), generator=g)
    tokens[:, 0] = CLS_ID
    tokens[rows, la + 1] = SEP_ID
    tokens[rows, valid - 1] = SEP_ID
    tokens[cols >= valid[:, None]] = PAD_ID
    segments = ((cols >= la[:, None] + 2) & (cols < valid[:, None])).long()
    return tokens, segments, valid


def one_row(*ids: int, length: int = 16):
    """A (1, length) row from its ids, which must read <cls> a.. <sep> b.. <sep>."""
    tokens = torch.full((1, length), PAD_ID)
    tokens[0, : len(ids)] = torch.tensor(ids)
    first_sep = ids.index(SEP_ID)
    segments = torch.zeros((1, length), dtype=torch.long)
    segments[0, first_sep + 1 : len(ids)] = 1
    return tokens, segments, torch.tensor([len(ids)])


def words_of(tokens, segments, valid_lens):
    """Each row's words as lists of positions, found one position at a time (on Python
    lists: indexing a tensor element by element costs microseconds a position)."""
    continuation = CONTINUATION.tolist()
    rows = []
    for row, candidate in zip(tokens.tolist(), candidates(segments, valid_lens).tolist()):
        words = []
        for p, token in enumerate(row):
            if not candidate[p]:
                continue
            if continuation[token] and p > 0 and candidate[p - 1]:
                words[-1].append(p)
            else:
                words.append([p])
        rows.append(words)
    return rows


def chosen_positions(weights, positions):
    return [set(positions[r][weights[r] > 0].tolist()) for r in range(len(weights))]


@pytest.mark.parametrize("max_preds", [1, 3, 10])
@pytest.mark.parametrize("table", [None, torch.zeros(VOCAB, dtype=torch.bool)])
def test_token_masking_is_bit_identical_to_the_previous_algorithm(max_preds, table):
    tokens, segments, valid = make_rows(500, 64, seed=max_preds)
    before = previous_mask_tokens(
        tokens, segments, valid, VOCAB, max_preds, torch.Generator().manual_seed(7)
    )
    g = torch.Generator().manual_seed(7)
    after = mask_tokens(tokens, segments, valid, VOCAB, max_preds, g, continuation=table)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    # The generator is left in the same state: later draws do not shift either.
    g_before = torch.Generator().manual_seed(7)
    previous_mask_tokens(tokens, segments, valid, VOCAB, max_preds, g_before)
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=g_before))


def test_whole_word_masking_masks_every_piece_of_a_chosen_word():
    tokens, segments, valid = make_rows(300, 64, seed=1)
    _, positions, _, weights = mask_tokens(
        tokens, segments, valid, VOCAB, 10, torch.Generator().manual_seed(1), CONTINUATION
    )
    multi_piece_words = 0
    for words, chosen in zip(
        words_of(tokens, segments, valid), chosen_positions(weights, positions), strict=True
    ):
        for word in words:
            assert set(word) <= chosen or not set(word) & chosen
            multi_piece_words += len(word) > 1 and set(word) <= chosen
    assert multi_piece_words > 20  # the table really produced words of several pieces


@pytest.mark.parametrize(("max_preds", "long_word"), [(8, {1, 2, 3, 4, 5}), (2, {1, 2})])
def test_a_first_word_over_the_budget_is_still_taken_cut_to_max_preds(max_preds, long_word):
    # Budget round(0.15 * 9) = 1 piece: "f" alone, or the 5-piece word as the first word.
    tokens, segments, valid = one_row(CLS_ID, WORD, *[PIECE] * 4, SEP_ID, WORD, SEP_ID)
    seen = []
    for seed in range(40):
        _, positions, labels, weights = mask_tokens(
            tokens,
            segments,
            valid,
            VOCAB,
            max_preds,
            torch.Generator().manual_seed(seed),
            CONTINUATION,
        )
        seen.append(chosen_positions(weights, positions)[0])
        real = weights[0] > 0
        assert torch.equal(positions[0][real], positions[0][real].sort().values)
        assert torch.equal(labels[0][real], tokens[0, positions[0][real]])
    assert {frozenset(s) for s in seen} == {frozenset({7}), frozenset(long_word)}


def test_a_continuation_piece_after_cls_or_sep_starts_its_own_word():
    tokens, segments, valid = one_row(CLS_ID, PIECE, WORD, PIECE, SEP_ID, PIECE, PIECE, SEP_ID)
    starts = word_starts(tokens, candidates(segments, valid), CONTINUATION)
    assert torch.nonzero(starts[0]).flatten().tolist() == [1, 2, 5]


def test_whole_word_masking_never_touches_special_tokens_and_stays_in_budget():
    tokens, segments, valid = make_rows(1000, 64, seed=2)
    max_preds = 10
    _, positions, labels, weights = mask_tokens(
        tokens, segments, valid, VOCAB, max_preds, torch.Generator().manual_seed(2), CONTINUATION
    )
    real = weights > 0
    rows = torch.arange(len(tokens))[:, None].expand_as(real)
    assert candidates(segments, valid)[rows[real], positions[real]].all()
    assert not torch.isin(labels[real], torch.tensor([CLS_ID, SEP_ID, PAD_ID])).any()
    assert (real.sum(1) >= 1).all()
    # Real predictions come first; the rest are position 0, label 0, weight 0.
    assert torch.equal(real, torch.arange(max_preds) < real.sum(1, keepdim=True))
    assert (positions[~real] == 0).all() and (labels[~real] == 0).all()
    budget = torch.round(0.15 * valid).clamp(min=1).long()
    first_word_cut = torch.zeros(len(tokens), dtype=torch.bool)
    for r, (words, chosen) in enumerate(
        zip(words_of(tokens, segments, valid), chosen_positions(weights, positions), strict=True)
    ):
        # Over budget only with a single word, taken first (whole, or cut to max_preds).
        first_word_cut[r] = len(chosen) > budget[r] and any(
            chosen == set(w[:max_preds]) for w in words if len(w) > budget[r]
        )
    assert ((real.sum(1) <= budget) | first_word_cut).all()
    assert first_word_cut.any()  # short rows with a long word do exercise the rule


def test_whole_word_masking_masks_about_15_percent_and_words_of_any_length():
    """Over 4000 rows of 64, with ~20% continuation ids, WWM masks 15.7% of the real tokens
    against 16.4% for token masking (round(0.15 * valid_len) counts <cls> and <sep>): a word
    that does not fit ends the row's taking, so rows fall a little short of the budget. The
    same stop makes a word's chance fall with its length in short rows (about 17%, 14%, 12%
    for 1, 2, 3 pieces at length 64; 15.2%, 14.9%, 14.7% at length 512)."""
    tokens, segments, valid = make_rows(4000, 64, seed=3)
    _, positions, _, weights = mask_tokens(
        tokens, segments, valid, VOCAB, 10, torch.Generator().manual_seed(3), CONTINUATION
    )
    fraction = (weights.sum() / (valid - 3).sum()).item()
    assert 0.14 < fraction < 0.17
    candidate = candidates(segments, valid)
    start = word_starts(tokens, candidate, CONTINUATION)
    start_pos = torch.where(start, torch.arange(64), 0).cummax(dim=1).values
    length = torch.zeros(tokens.shape, dtype=torch.long).scatter_add_(
        1, start_pos, candidate.long()
    )
    masked = torch.zeros(tokens.shape, dtype=torch.bool)
    real = weights > 0
    masked[torch.arange(len(tokens))[:, None].expand_as(real)[real], positions[real]] = True
    chance = [masked[start & (length == k)].float().mean().item() for k in (1, 2, 3)]
    assert all(0.09 < c < 0.21 for c in chance), chance


def test_whole_word_masking_corrupts_each_piece_on_its_own():
    tokens, segments, valid = make_rows(2000, 64, seed=4)
    out, positions, labels, weights = mask_tokens(
        tokens, segments, valid, VOCAB, 10, torch.Generator().manual_seed(4), CONTINUATION
    )
    real = weights > 0
    rows = torch.arange(len(tokens))[:, None].expand_as(real)
    corrupted = out[rows[real], positions[real]]
    assert 0.77 < (corrupted == MASK_ID).float().mean().item() < 0.83
    assert 0.07 < (corrupted == labels[real]).float().mean().item() < 0.13  # unchanged ~10%
    # A piece after a masked piece of its word is not always masked: draws are per piece.
    piece_masked = out[rows[real], positions[real]] == MASK_ID
    is_piece = CONTINUATION[labels[real]]
    assert 0.0 < piece_masked[is_piece].float().mean().item() < 1.0


def test_hashed_draws_are_uniform_per_row_and_keep_the_masking_rules():
    tokens, segments, valid = make_rows(3000, 64, seed=5)
    indices = np.arange(3000)
    keys, u, words = hashed_draws(11, np.zeros(3000), indices, 64, 10, VOCAB)
    for draws in (keys, u):
        assert draws.min() >= 0.0 and draws.max() < 1.0
        assert abs(draws.mean().item() - 0.5) < 0.01
    assert words.min() >= len(RESERVED) and words.max() < VOCAB
    # a row is a function of (seed, epoch, index) alone: not of the batch around it
    alone = hashed_draws(11, np.zeros(2), np.array([7, 3]), 64, 10, VOCAB)
    assert all(
        torch.equal(a[0], d[7]) and torch.equal(a[1], d[3]) for a, d in zip(alone, (keys, u, words))
    )
    other_epoch = hashed_draws(11, np.ones(3000), indices, 64, 10, VOCAB)
    assert not torch.equal(other_epoch[0], keys)

    out, positions, labels, weights = mask_tokens(
        tokens, segments, valid, VOCAB, 10, (keys, u, words), CONTINUATION
    )
    real = weights > 0
    rows = torch.arange(len(tokens))[:, None].expand_as(real)
    assert torch.equal(labels[real], tokens[rows[real], positions[real]])
    corrupted = out[rows[real], positions[real]]
    masked = (corrupted == MASK_ID).float().mean().item()
    kept = (corrupted == labels[real]).float().mean().item()
    assert 0.77 < masked < 0.83 and 0.08 < kept < 0.13
    chosen = chosen_positions(weights, positions)
    for words_, picked in zip(words_of(tokens, segments, valid), chosen, strict=True):
        assert all(set(w) <= picked or not set(w) & picked for w in words_)


def test_whole_word_masking_is_deterministic_in_the_seed():
    tokens, segments, valid = make_rows(200, 64, seed=6)

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return mask_tokens(tokens, segments, valid, VOCAB, 10, g, CONTINUATION)

    first, again, other = draw(8), draw(8), draw(9)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[1], other[1])
