"""Plain numpy oracles the blockwise code is compared against."""

import numpy as np


def nearest_oracle(pixels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Integer argmin of squared distances, ties to the lowest index."""
    p = pixels.reshape(-1, 3).astype(np.int64)
    c = np.asarray(palette, np.int64)
    d = ((p[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)
    return d.argmin(axis=1).astype(np.uint8).reshape(pixels.shape[:-1])


def pixel_lloyd(x: np.ndarray, centers: np.ndarray, max_iter: int = 300):
    """Textbook Lloyd on every pixel (unweighted), until assignments stop changing."""
    x = x.astype(np.float64)
    c = centers.astype(np.float64).copy()
    labels = None
    for _ in range(max_iter):
        d = ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)
        new = d.argmin(axis=1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        for j in range(len(c)):
            members = x[labels == j]
            if len(members):
                c[j] = members.mean(axis=0)
    d = ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)
    return c, float(d.min(axis=1).sum())


def mode_oracle(labels: np.ndarray) -> np.ndarray:
    """Each output pixel: the most frequent value of its 2x2 block (only the pixels inside
    the image), ties to the smallest value."""
    h, w = labels.shape
    out = np.zeros(((h + 1) // 2, (w + 1) // 2), np.uint8)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            values, counts = np.unique(
                labels[2 * i : 2 * i + 2, 2 * j : 2 * j + 2], return_counts=True
            )
            out[i, j] = values[counts == counts.max()].min()
    return out


def pyramid_oracle(labels: np.ndarray, levels: int) -> list[np.ndarray]:
    out = [labels]
    for _ in range(1, levels):
        out.append(mode_oracle(out[-1]))
    return out
