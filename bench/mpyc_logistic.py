"""Logistic regression in MPyC (Shamir secret sharing, secure fixed point): the baseline bench_job.py times.

Run as an MPyC program: `python bench/mpyc_logistic.py -M3 DATA.npz OUT.json`. Party 0 secret-shares the
training rows it reads from DATA.npz (x_train, y_train, learning_rate, coefficients, iterations); all three
parties run cpml's update (Nesterov gradient descent, without its projection onto the weight ball) with the
same degree-1 polynomial sigmoid and step, on SecFxp values; the weights are opened at the end and party 0 writes them
with the seconds it took (after the parties connected) to OUT.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from mpyc.runtime import mpc

FRACTIONAL_BITS = 16
BITS = 32  # 16 integer bits: the products' sums over 800 rows stay far below 2^15


async def main(data_path: str) -> dict:
    """Share the data, train, open the weights: them and the seconds it took."""
    secfxp = mpc.SecFxp(BITS, FRACTIONAL_BITS)
    await mpc.start()
    began = time.perf_counter()
    data = np.load(data_path)
    iterations = int(data["iterations"])
    rate = float(data["learning_rate"])
    c0, c1 = (float(c) for c in data["coefficients"])
    if mpc.pid == 0:
        x_plain, y_plain = data["x_train"], data["y_train"].astype(float)
    else:  # the other parties know only the shapes
        x_plain, y_plain = np.zeros(data["x_train"].shape), np.zeros(data["y_train"].shape)
    rows = x_plain.shape[0]
    # integral=False on every party: inferred from the values, it would differ between the data owner and the
    # others (their zeros are integral), and the parties would then disagree on which products to truncate
    x = mpc.input(secfxp.array(x_plain, integral=False), senders=0)
    y = mpc.input(secfxp.array(y_plain, integral=False), senders=0)
    xt = x.T
    w = previous = secfxp.array(np.zeros(x_plain.shape[1]))
    for t in range(iterations):
        query = w + (t / (t + 3)) * (w - previous) if t else w  # Nesterov's look-ahead, as cpml's update
        s = c0 + c1 * (x @ query)  # the degree-1 polynomial sigmoid on [-8, 8]
        gradient = xt @ (s - y)
        previous, w = w, query - (rate / rows) * gradient
        await mpc.barrier(f"iteration {t + 1}")
    weights = await mpc.output(w)
    seconds = time.perf_counter() - began
    await mpc.shutdown()
    return {
        "weights": [float(v) for v in weights],
        "seconds": seconds,
        "parties": len(mpc.parties),
        "bits": BITS,
        "fractional_bits": FRACTIONAL_BITS,
    }


if __name__ == "__main__":
    result = mpc.run(main(sys.argv[1]))
    if mpc.pid == 0:
        Path(sys.argv[2]).write_text(json.dumps(result))
