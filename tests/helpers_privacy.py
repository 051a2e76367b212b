"""What the privacy tests share: the protection switched off, as a mask source."""

import numpy as np


def zero_masks(field, shape: tuple[int, ...]) -> np.ndarray:
    """The protection switched off: every mask is 0 (a control every leak check must catch)."""
    return np.zeros(shape, dtype=np.uint32)
