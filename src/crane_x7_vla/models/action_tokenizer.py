"""OpenVLA's uniform action binning: 256 bins over [-1, 1] mapped onto the last 256 ids of the base vocabulary.

Pure numpy. ``vocab_size`` is the *unpadded* size ``V`` (Llama-2: 32000 = text_config.vocab_size -
pad_to_multiple_of; MiniVLA: len(tokenizer)), never hard-coded. Encode: ``token = V - digitize(clip(a), bins)``,
so ids run V-256..V-1 and a higher id means a more negative action. Decode: ``centers[clip(V - t - 1, 0, 254)]``
(the published decode; the top bin 256 shares the last centre).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


class ActionTokenizer:
    def __init__(self, vocab_size: int, n_bins: int = 256, min_action: float = -1.0, max_action: float = 1.0):
        if vocab_size <= n_bins:
            raise ValueError(f"vocab_size {vocab_size} must exceed n_bins {n_bins}")
        self.vocab_size = int(vocab_size)
        self.n_bins = int(n_bins)
        self.bins = np.linspace(min_action, max_action, self.n_bins)  # [n_bins] bin edges
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0  # [n_bins-1]
        self.min_action, self.max_action = float(min_action), float(max_action)

    @property
    def first_token_id(self) -> int:
        return self.vocab_size - self.n_bins

    def token_ids(self) -> NDArray[np.int64]:
        """All action-token ids, ascending: V-n_bins .. V-1 ([n_bins])."""
        return np.arange(self.first_token_id, self.vocab_size, dtype=np.int64)

    def encode(self, actions: ArrayLike) -> NDArray[np.int64]:
        """Normalised actions [..., D] in [-1, 1] (clipped) -> token ids [..., D]."""
        a = np.clip(np.asarray(actions, dtype=np.float64), self.min_action, self.max_action)
        return (self.vocab_size - np.digitize(a, self.bins)).astype(np.int64)

    def decode(self, token_ids: ArrayLike) -> NDArray[np.float32]:
        """Token ids [..., D] -> normalised actions [..., D] (bin centres; out-of-range ids are clipped)."""
        t = np.asarray(token_ids, dtype=np.int64)
        idx = np.clip(self.vocab_size - t - 1, 0, self.bin_centers.shape[0] - 1)
        return self.bin_centers[idx].astype(np.float32)
