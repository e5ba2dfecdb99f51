"""finetune.token_shift: the random-shift augmentation of the fine-tuning token grids (vpdd.train.datasets)."""

from __future__ import annotations

import numpy as np
import pytest

from vpdd.tokenizer.cache import TokenCache
from vpdd.train.datasets import FinetuneData, shift_grids


def test_shift_grids_moves_each_grid_and_repeats_its_edges():
    grid = np.arange(16).reshape(1, 1, 4, 4)
    grids = np.concatenate([grid, grid])
    out = shift_grids(grids, np.array([[1, 0], [0, -1]]))
    assert out[0, 0, 1:].tolist() == grid[0, 0, :3].tolist() and out[0, 0, 0].tolist() == grid[0, 0, 0].tolist()
    assert out[1, 0, :, :3].tolist() == grid[0, 0, :, 1:].tolist()
    assert out[1, 0, :, 3].tolist() == grid[0, 0, :, 3].tolist()
    assert shift_grids(grids, np.zeros((2, 2), dtype=int)) is grids
    with pytest.raises(ValueError, match="not smaller than the 4 x 4 token grid"):
        shift_grids(grids, np.array([[4, 0], [0, 0]]))


def _data(artefacts, synthetic, shift: int) -> FinetuneData:
    cfg = synthetic.config()
    act = cfg.model.actions
    data = FinetuneData(TokenCache(artefacts["tokens"]), artefacts["robot"], list(cfg.data.robot.tasks),
                        cfg.finetune.demos_per_task, cfg.finetune.future_offset, act.n_bins, act.chunk,
                        token_shift=shift)
    data.bind({text: i for i, text in enumerate(data.texts())})
    # the synthetic tokenizer codes its flat frames with one code: give every grid position its own value
    tokens = data.pairs.source.tokens
    data.pairs.source.tokens = np.arange(tokens.size, dtype=np.int64).reshape(tokens.shape) % 30000
    return data


def test_shifted_batches_keep_the_rows_and_move_history_and_target_together(artefacts, synthetic):
    plain, shifted = _data(artefacts, synthetic, 0), _data(artefacts, synthetic, 1)
    grid = TokenCache(artefacts["tokens"]).grid_shape
    moved = 0
    for step in range(4):
        a, b = plain.batch(8, 0, 0, step, 0), shifted.batch(8, 0, 0, step, 0)
        assert np.array_equal(a.actions, b.actions) and np.array_equal(a.lang_ids, b.lang_ids)
        for i in range(8):
            h, t = (x[i].numpy().reshape(1, *grid) for x in (a.history, a.target))
            options = {(dy, dx): (shift_grids(h, np.array([[dy, dx]])), shift_grids(t, np.array([[dy, dx]])))
                       for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
            hs, ts = (x[i].numpy().reshape(1, *grid) for x in (b.history, b.target))
            same = [k for k, (hh, tt) in options.items() if np.array_equal(hh, hs) and np.array_equal(tt, ts)]
            assert same, "the shifted pair is no common shift of the original pair"
            moved += not np.array_equal(hs, h)
    assert moved > 0
    ev_a, ev_b = plain.eval_batch(4, 0), shifted.eval_batch(4, 0)
    assert np.array_equal(ev_a.history, ev_b.history) and np.array_equal(ev_a.target, ev_b.target)
    with pytest.raises(ValueError, match="finetune.token_shift=99"):
        _data(artefacts, synthetic, 99)
